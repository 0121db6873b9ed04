"""The web dashboard's device list at 100 and at 10,000 devices, measured in one run.

    .venv/bin/python bench/ui_devices.py [--small 100] [--large 10000] [--repeat 25]

For each size: a SQLite database filled through the server's own registration path
(``devices.register_devices``, in batches of ``Limits.max_register_batch``) and heartbeat path
(``devices.record_heartbeat``: 90 % of the devices connected, serving a model, tagged
``site=berlin`` or ``site=paris``); then a real control plane on loopback (TLS), a dashboard login,
and ``GET /ui/devices`` timed over HTTPS: the first page, and a filtered page (status connected,
tag ``site=paris``, model ``detector``), and the last page (the list pages by offset). Prints the median and p90 of each, and the ratio of the
large to the small fleet (the page shows 50 devices either way, so the ratio is the cost of the
fleet's size: it should stay near 1).
"""

from __future__ import annotations

import argparse
import re
import ssl
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx

CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')
FILTERED = {"status": "connected", "tag": "site=paris", "model": "detector"}


def fill(state: Any, count: int) -> None:
    """``count`` devices in fleet ``bench``, registered and (90 %) heartbeating via the services."""
    from edgefleet.server import devices, fleets

    db = state.db
    batch = state.config.limits.max_register_batch
    names = [f"dev-{i:06d}" for i in range(count)]
    with db.session() as session:
        fleets.create_fleet(session, fleets.FleetSpec("bench", "file:///tmp/bench"), db.now())
    for start in range(0, count, batch):
        specs = [
            devices.DeviceSpec(n, tags={"site": "berlin" if i % 2 else "paris"})
            for i, n in enumerate(names[start : start + batch], start)
        ]
        with db.session() as session:
            devices.register_devices(session, "bench", specs, state.ca, db.now(), timedelta(days=1))
    beat = devices.Heartbeat(
        agent_version="1.0.0",
        models=[devices.ModelReport("detector", "1", metrics=[{"MetricName": "requests", "Value": 10}])],
    )
    for start in range(0, count, batch):
        with db.session() as session:
            for name in names[start : start + batch]:
                if int(name[4:]) % 10 == 9:
                    continue  # offline: never sent a heartbeat
                devices.record_heartbeat(session, devices.get_device(session, name), beat, db.now())


def measure(count: int, repeat: int) -> dict[str, list[float]]:
    """Seconds per GET of the first and of a filtered device page, on a fleet of ``count``."""
    from edgefleet.server import tokens
    from edgefleet.server.config import ServerConfig, Timing
    from edgefleet.server.runner import start_in_thread

    with tempfile.TemporaryDirectory(prefix="edgefleet-bench-ui-") as directory:
        config = ServerConfig(
            data_dir=Path(directory), port=0, device_port=0, timing=Timing(shutdown_grace=1)
        )
        server = start_in_thread(config)
        try:
            started = time.perf_counter()
            fill(server.state, count)
            print(f"  {count} devices filled in {time.perf_counter() - started:.1f} s", flush=True)
            db = server.state.db
            with db.session() as session:
                secret = tokens.create_token(session, "bench", db.now())
            endpoints = server.endpoints
            context = ssl.create_default_context(cafile=endpoints.ca_cert)
            with httpx.Client(base_url=endpoints.api_url, verify=context, timeout=60) as client:
                csrf = CSRF_RE.search(client.get("/ui/login").text)
                assert csrf is not None
                login = client.post(
                    "/ui/login", data={"token": secret, "csrf_token": csrf.group(1)}, follow_redirects=False
                )
                assert login.status_code == 303, login.text
                from edgefleet.server.ui.pages import DEVICE_PAGE
                from edgefleet.server.validation import encode_page_token

                # the device list pages by offset (server/db/paging.py): the last page is the slowest
                last = {"page": encode_page_token(max(0, count - DEVICE_PAGE))}
                cases = (("first page", {}), ("filtered page", FILTERED), ("last page", last))
                times: dict[str, list[float]] = {label: [] for label, _ in cases}
                for _ in range(3):  # warm up connections and caches
                    client.get("/ui/devices")
                    client.get("/ui/devices", params=FILTERED)
                for _ in range(repeat):
                    for label, params in cases:
                        began = time.perf_counter()
                        response = client.get("/ui/devices", params=params)
                        times[label].append(time.perf_counter() - began)
                        assert response.status_code == 200, response.text[:500]
                        assert 'id="device-row-' in response.text
            return times
        finally:
            server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=100)
    parser.add_argument("--large", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=25)
    args = parser.parse_args(argv)
    results = {}
    for count in (args.small, args.large):
        print(f"fleet of {count} devices:", flush=True)
        results[count] = measure(count, args.repeat)
        for label, values in results[count].items():
            ordered = sorted(values)
            p90 = ordered[int(0.9 * (len(ordered) - 1))]
            print(
                f"  GET /ui/devices {label:14s} median {statistics.median(values) * 1000:7.1f} ms"
                f"  p90 {p90 * 1000:7.1f} ms"
            )
    print(f"ratio {args.large} / {args.small} devices (medians):")
    for label in results[args.small]:
        small = statistics.median(results[args.small][label])
        large = statistics.median(results[args.large][label])
        print(f"  {label:14s} {large / small:5.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
