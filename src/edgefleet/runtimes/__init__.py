"""Runtime backends: the small seam between the agent and an inference engine.

See :mod:`edgefleet.runtimes.base` for the interface and the registry by name.
"""
