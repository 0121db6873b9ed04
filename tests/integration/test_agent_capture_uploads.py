"""GetCaptureUploads (extension ``capture-uploads``) on a real agent over its Unix socket: the
backlog, the objects the store confirmed after a cursor, paging, restart, and refused arguments."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import numpy as np
import pytest
from support import build_null, start, wait_for

from edgefleet.client import AgentClient
from edgefleet.core.errors import InvalidArgument
from edgefleet.protocol.agent.proto import extensions_pb2


def test_capture_uploads_over_the_socket(tmp_path: Path, trust: Path, keys: Path) -> None:
    packages = {v: build_null(keys, tmp_path / "pkgs", name="cam", version=v) for v in ("1.0", "2.0")}
    agent = start(tmp_path, trust, capture={"batch_size": 2, "buffer_size": 10, "push_period_seconds": 0.1})
    try:
        with AgentClient(agent.address, timeout=60) as client:
            assert "capture-uploads" in client.server_metadata().extensions
            client.load(str(packages["1.0"]), "cam-1")
            client.load(str(packages["2.0"]), "cam-2")
            empty = client.capture_uploads()
            assert empty.report.uploads == () and empty.next_after == 0 and empty.epoch

            x = np.ones((1, 4), dtype=np.float32)
            ids = [
                client.capture(alias, inputs={"x": x}, outputs={"y": x})
                for alias in ("cam-1", "cam-2", "cam-1")
            ]
            wait_for(lambda: all(client.capture_status(i) == "SUCCESS" for i in ids), "captures written")

            page = client.capture_uploads(after=0, limit=500)
            uploads = page.report.uploads
            records: dict[str, int] = {}
            for upload in uploads:  # how captures fall into objects depends on timing; the totals do not
                records[upload.model_version] = records.get(upload.model_version, 0) + upload.records
            assert records == {"1.0": 2, "2.0": 1}
            assert page.report.backlog_records == 0 and page.report.backlog_bytes == 0
            assert page.report.dropped == 0 and page.report.failed == 0
            assert page.next_after == len(uploads) and page.trimmed == 0 and page.first_log_id == 1
            for upload in uploads:
                data = (agent.capture_dir / upload.key).read_bytes()
                assert upload.model_name == "cam" and upload.size == len(data)
                versions = {json.loads(line)["eventMetadata"]["modelVersion"] for line in data.splitlines()}
                assert versions == {upload.model_version}
                assert upload.first_inference is not None and upload.last_inference is not None

            # the cursor pages, one entry at a time
            paged: tuple[object, ...] = ()
            cursor = 0
            for _ in uploads:
                one = client.capture_uploads(after=cursor, limit=1)
                paged, cursor = paged + one.report.uploads, one.next_after
            assert paged == uploads
            assert client.capture_uploads(after=page.next_after).report.uploads == ()

            with pytest.raises(InvalidArgument, match="page size must be between 1 and 10000"):
                client.capture_uploads(limit=10_001)
            with pytest.raises(InvalidArgument, match="need after >= 0"):
                client.capture_uploads(after=-1)
            # limit 0 on the wire means the default page
            stub = agent.ext()
            raw = stub.GetCaptureUploads(extensions_pb2.CaptureUploadsRequest(after=0, limit=0))
            assert len(raw.uploads) == len(uploads)
            with pytest.raises(grpc.RpcError) as refused:
                stub.GetCaptureUploads(extensions_pb2.CaptureUploadsRequest(after=0, limit=20_000))
            assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        agent.stop()

        # the log lives in the spool: a restarted agent answers the same, under the same epoch
        again = start(tmp_path, trust, socket=agent.socket)
        try:
            with AgentClient(again.address, timeout=60) as client:
                after = client.capture_uploads()
                assert after.epoch == page.epoch and after.report.uploads == uploads
        finally:
            again.stop()
    finally:
        if agent.proc.poll() is None:
            agent.stop()
