"""The device plane's routine calls, one service per operation (heartbeat, poll, result, download).

Each service (:class:`~edgefleet.server.deviceplane.service.Service`) takes a batch of calls and
answers each with a result or an :class:`~edgefleet.core.errors.EdgefleetError`: a set-based tier
decides the common cases of the whole batch in a few statements, an exact tier every other call
alone. The FastAPI routes (:mod:`edgefleet.server.api.device_plane`, batches of one) and the device
listener's ASGI entry (:mod:`edgefleet.server.api.fastpath`, transport only) call the same services.
"""
