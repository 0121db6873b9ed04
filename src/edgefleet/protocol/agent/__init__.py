"""The device agent's wire protocol (proto, tensor codec, fast-socket framing): imported by agent and client."""
