"""``edgefleet capture list|show|fetch|export`` against a real control plane whose capture store
holds objects written the way a device's sink writes them, reported by real heartbeats."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from server_testkit import captured_batch, enrol, heartbeat_uploads

from edgefleet.cli import main as cli_main

T0 = datetime(2030, 4, 1, 8, 0, 0, tzinfo=UTC)
HAVE_PYARROW = importlib.util.find_spec("pyarrow") is not None


@pytest.fixture
def run(
    fleet_server: Any, operator_token: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> Any:
    """``edgefleet ARGS`` in-process with the operator's settings; (exit code, stdout, stderr)."""
    endpoints = fleet_server.endpoints
    monkeypatch.setenv("EDGEFLEET_CLIENT_CONFIG", str(tmp_path / "client.json"))
    monkeypatch.setenv("EDGEFLEET_SERVER", endpoints.api_url)
    monkeypatch.setenv("EDGEFLEET_CA_CERT", str(endpoints.ca_cert))
    monkeypatch.setenv("EDGEFLEET_TOKEN", operator_token)

    def invoke(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = cli_main.main(list(args))
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return invoke


@pytest.fixture(scope="module")
def captured(
    fleet_server: Any, operator_token: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    """Fleet ``ccli``: ccli-1 det 1 (3 small records at T0, 2 big at T0+1h), ccli-2 det 2 (2 at
    T0+2h) and cls 1; their CaptureUploads in that order."""
    from edgefleet.opclient.client import FleetClient
    from edgefleet.opclient.config import ClientConfig

    endpoints = fleet_server.endpoints
    op = FleetClient(ClientConfig(endpoints.api_url, operator_token, Path(endpoints.ca_cert)))
    op.create_fleet("ccli", "s3://bucket/ccli")
    registered = op.register_devices("ccli", [{"DeviceName": "ccli-1"}, {"DeviceName": "ccli-2"}])
    work = tmp_path_factory.mktemp("ccli")
    cams = [enrol(endpoints.api_url, r["EnrolmentToken"], work / r["DeviceName"]) for r in registered]
    store = fleet_server.state.captures
    uploads = [
        captured_batch(store, "ccli", "ccli-1", "det", "1", T0, 3),
        captured_batch(store, "ccli", "ccli-1", "det", "1", T0 + timedelta(hours=1), 2, big=True),
        captured_batch(store, "ccli", "ccli-2", "det", "2", T0 + timedelta(hours=2), 2),
        captured_batch(store, "ccli", "ccli-2", "cls", "1", T0 + timedelta(hours=2, minutes=5), 1),
    ]
    try:
        heartbeat_uploads(cams[0], uploads[:2])
        heartbeat_uploads(cams[1], uploads[2:])
        yield uploads
    finally:
        for cam in cams:
            cam.close()
        op.close()


def test_list_and_show(run: Any, captured: Any) -> None:
    a, b, c, d = captured
    code, out, _ = run("capture", "list", "--fleet", "ccli")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["KEY", "DEVICE", "MODEL", "VERSION"]
    assert [line.split()[0] for line in lines[1:] if line.strip() and not line.startswith(("─", "-"))] == [
        a.key,
        b.key,
        c.key,
        d.key,
    ]
    code, out, _ = run("capture", "list", "--fleet", "ccli", "--model", "det", "--version", "2", "--json")
    assert code == 0
    assert [r["Key"] for r in json.loads(out)] == [c.key]
    code, out, _ = run("capture", "list", "--device", "ccli-1", "--until", "2030-04-01T09:00:00Z", "--json")
    assert [r["Key"] for r in json.loads(out)] == [a.key]
    code, out, _ = run("capture", "show", b.key)
    assert code == 0
    fields = dict(line.split(None, 1) for line in out.splitlines() if line.startswith(("Device ", "Records")))
    assert fields == {"Device": "ccli-1", "Records": "2"}
    code, out, _ = run("capture", "show", b.key, "--json")
    assert json.loads(out)["RawObjects"] == 2


def test_fetch(run: Any, captured: Any, fleet_server: Any, tmp_path: Path) -> None:
    a = captured[0]
    target = tmp_path / "batch.jsonl"
    code, out, _ = run("capture", "fetch", a.key, "-o", str(target))
    assert code == 0 and f"written to {target}" in out
    assert target.read_bytes() == fleet_server.state.captures.get_bytes(a.key)
    code, out, _ = run("capture", "fetch", a.key, "-o", str(target), "--json")
    assert json.loads(out) == {"Key": a.key, "Path": str(target), "Size": a.size}


def test_export_writes_stacked_tensors_and_a_manifest(run: Any, captured: Any, tmp_path: Path) -> None:
    a, b, c, _ = captured
    out_dir = tmp_path / "export"
    code, out, err = run("capture", "export", "--fleet", "ccli", "--model", "det", "-o", str(out_dir))
    assert code == 0, err
    assert "exported 7 records from 3 objects" in out
    # progress on stderr (not a terminal: a line per object), and what Parquet needs
    assert [line for line in err.splitlines() if "objects (" in line] == [
        f"export: 1/3 objects ({a.key})",
        f"export: 2/3 objects ({b.key})",
        f"export: 3/3 objects ({c.key})",
    ]
    manifest = json.loads((out_dir / "manifest.json").read_text())
    assert manifest["RecordCount"] == 7
    if HAVE_PYARROW:  # the dev install has it (extra `parquet`)
        import pyarrow.parquet as pq

        assert manifest["Parquet"] == "records.parquet"
        rows = pq.read_table(out_dir / "records.parquet").to_pylist()
        assert [r["capture_id"] for r in rows] == [r["CaptureId"] for r in manifest["Records"]]
        assert [r["output.y"] for r in rows] == [[0], [1], [2], [0], [1], [0], [1]]
        assert rows[3]["input.x.shape"] == [32, 32] and rows[0]["input.x.shape"] == [2, 3]
        assert rows[0]["input.x"] == np.load(out_dir / "inputs/x.2x3.float32.npy")[0].reshape(-1).tolist()
    else:
        assert "pyarrow is not installed: no records.parquet (pip install pyarrow" in err
    assert [(o["Key"], o["DeviceName"], o["Records"]) for o in manifest["Objects"]] == [
        (a.key, "ccli-1", 3),
        (b.key, "ccli-1", 2),
        (c.key, "ccli-2", 2),
    ]
    assert [r["ModelVersion"] for r in manifest["Records"]] == ["1"] * 5 + ["2"] * 2
    assert manifest["Records"][3]["InferenceTime"] == "2030-04-01T09:00:00Z"
    tensors = {(t["Mode"], t["Name"]): t["Files"] for t in manifest["Tensors"]}
    # y agrees in shape everywhere: one file; x is (2, 3) in small records, (32, 32) in big ones
    [y] = tensors[("Output", "y")]
    assert (y["File"], y["Shape"], y["DataType"], y["Records"]) == (
        "outputs/y.npy",
        [7, 1],
        "INT64",
        list(range(7)),
    )
    ys = np.load(out_dir / y["File"])
    assert ys.dtype == np.int64 and ys[:, 0].tolist() == [0, 1, 2, 0, 1, 0, 1]
    small, big = sorted(tensors[("Input", "x")], key=lambda f: f["Shape"][1])
    assert (small["File"], small["Shape"], small["Records"]) == (
        "inputs/x.2x3.float32.npy",
        [5, 2, 3],
        [0, 1, 2, 5, 6],
    )
    assert (big["File"], big["Shape"], big["Records"]) == ("inputs/x.32x32.float32.npy", [2, 32, 32], [3, 4])
    xs = np.load(out_dir / small["File"])
    assert xs.dtype == np.float32 and xs[:, 0, 0].tolist() == [0, 1, 2, 0, 1]
    # the big records' payloads came from raw-data files, through the server
    assert np.load(out_dir / big["File"])[1].tolist() == np.ones((32, 32), np.float32).tolist()

    # a version and a time narrow it down
    narrow = tmp_path / "narrow"
    code, out, err = run(
        "capture", "export", "--fleet", "ccli", "--model", "det", "--version", "1",
        "--since", "2030-04-01T08:30:00", "-o", str(narrow), "--json",
    )  # fmt: skip
    assert code == 0, err
    manifest = json.loads(out)
    assert [o["Key"] for o in manifest["Objects"]] == [b.key]
    assert [t["Files"][0]["File"] for t in manifest["Tensors"]] == ["inputs/x.npy", "outputs/y.npy"]


def test_export_asked_for_parquet_without_pyarrow_says_what_to_install(
    run: Any, captured: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as if not installed: importing it fails
    out_dir = tmp_path / "pq"
    code, out, err = run(
        "capture", "export", "--fleet", "ccli", "--model", "det", "-o", str(out_dir), "--parquet", "yes"
    )
    assert code == 1 and out == ""
    assert "--parquet yes needs pyarrow, which is not installed here (pip install pyarrow)" in err
    assert not out_dir.exists()  # refused before anything was written
    # by default the export goes ahead without it, and says what Parquet needs
    code, out, err = run("capture", "export", "--fleet", "ccli", "--model", "det", "-o", str(out_dir))
    assert code == 0, err
    assert "pyarrow is not installed: no records.parquet (pip install pyarrow" in err
    assert json.loads((out_dir / "manifest.json").read_text())["Parquet"] is None
    assert not (out_dir / "records.parquet").exists()


def test_bad_input(run: Any, captured: Any, tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exited:
        run("capture", "list", "--since", "yesterday")
    assert exited.value.code == 2
    code, _, err = run("capture", "list", "--fleet", "nowhere")
    assert code == 1 and "fleet 'nowhere'" in err
    missing = captured[0].key.rsplit("/", 1)[0] + "/" + "0" * 32 + ".jsonl"
    code, _, err = run("capture", "show", missing)
    assert code == 1 and "is not in the capture index" in err
    code, _, err = run("capture", "fetch", missing, "-o", str(tmp_path / "x.jsonl"))
    assert code == 1 and "is not in the capture index" in err and not (tmp_path / "x.jsonl").exists()
    code, _, err = run("capture", "fetch", captured[0].key, "-o", str(tmp_path))
    assert code == 1 and "is a directory" in err
    code, _, err = run("capture", "export", "--fleet", "nowhere", "--model", "det", "-o", str(tmp_path / "e"))
    assert code == 1 and "fleet 'nowhere'" in err
    assert os.listdir(tmp_path) == []
