"""Simulation and fakes of the device daemon's peers: ``control_plane`` (a fake control plane for
one device), ``nullagent`` (the real agent in process on the null runtime) and ``simulator`` (many
simulated devices in one process, ``edgefleet simulate``)."""
