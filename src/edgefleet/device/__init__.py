"""The device daemon (``edgefleet device``): enrolment, heartbeats and the deployment reconcile loop.

Layout, one module per concept:

- ``config`` — the daemon's typed knobs, read from a TOML file;
- ``identity`` — the device key, enrolment (token + CSR -> client certificate) and the stored identity;
- ``protocol`` — the :class:`~edgefleet.device.protocol.ControlPlane` seam and the value types it carries;
- ``https`` — the control plane over HTTPS with mutual TLS (stdlib only);
- ``state`` — installed models, deployment history and the in-flight journal, persisted on disk;
- ``packages`` — download with resume and digest check, signature verification, staging, clean-up;
- ``plan`` — the planner: desired deployment vs installed state -> undoable steps;
- ``executor`` — runs a plan with retries, journals every step, rolls back, yields a closed result;
- ``metrics`` — device and per-model metrics for heartbeats;
- ``outbox`` — the bounded, persistent queue of heartbeats and results sent when the server is back;
- ``agentlink`` — the agent seam: an existing agent socket or a supervised child process;
- ``daemon`` — the daemon itself (lifecycle, loops);
- ``sim`` — fakes and simulation: a fake control plane, the null agent, many simulated devices.

Device-side code: nothing here imports the control plane (``edgefleet.server``) or any heavy library.
"""

from __future__ import annotations
