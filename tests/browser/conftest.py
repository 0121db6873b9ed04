"""Fixtures of the real-browser tests of the web dashboard (``/ui``).

One Chromium for the whole session (Debian's ``chromium`` package driven by Playwright; Playwright
gives it a fresh temporary profile), one real ``edgefleet server`` process (SQLite and local
artifacts in a temporary directory) and one ``edgefleet simulate`` process whose devices enrol and
send real heartbeats over mutual TLS. Each test gets a new browser context (its own cookies).

Screenshots go to ``--browser-artifacts`` (default ``test-artifacts/browser/`` in the repository),
with the server's and the simulator's logs; a failing test leaves ``FAILED-<test>.png`` there.
The tests skip, saying why, when Playwright or Chromium is missing (``scripts/test`` installs both
when it runs as root on Debian).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest
from browser_testkit import (
    CHROMIUM_ARGS,
    DEPLOY_MODEL,
    IDLE_DEVICES,
    IDLE_FLEET,
    REVIEW_MODEL,
    SIM_DEVICES,
    SIM_FLEET,
    TIMEOUT_MS,
    VIEWPORT,
    Dashboard,
    ServerProcess,
    Simulation,
    chromium_executable,
    clear_artifacts,
    login,
)
from support import build_null, wait_for

#: whether the test's call phase failed (set by the report hook, read by the page fixtures)
_FAILED = pytest.StashKey[bool]()
#: the artifacts directory, once a browser test has made it (for the terminal summary)
ARTIFACTS = pytest.StashKey[Path]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    """Remember whether the test failed (an expected failure does not), for ``page``'s teardown."""
    report = yield
    if call.when == "call":
        item.stash[_FAILED] = report.failed
    return report


@pytest.fixture(scope="session")
def artifacts(request: pytest.FixtureRequest) -> Path:
    """The directory screenshots and logs go to (emptied of earlier screenshots and logs)."""
    directory = Path(request.config.getoption("browser_artifacts"))
    if not directory.is_absolute():
        directory = request.config.rootpath / directory
    directory.mkdir(parents=True, exist_ok=True)
    clear_artifacts(directory)
    request.config.stash[ARTIFACTS] = directory
    return directory


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    directory = config.stash.get(ARTIFACTS, None)
    if directory is not None:
        terminalreporter.write_line(f"browser test screenshots and logs: {directory}")


@pytest.fixture(scope="session")
def chromium() -> Path:
    """Chromium's executable; skips the browser tests when Playwright or Chromium is missing."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip("Playwright is not installed (it is in the dev extra: scripts/install dev)")
    executable = chromium_executable()
    if executable is None:
        pytest.skip(
            "Chromium is not installed: apt-get install chromium (scripts/test does it when run as root)"
        )
    return executable


@pytest.fixture(scope="module")
def browser(chromium: Path) -> Iterator[Any]:
    """One headless Chromium for the browser tests (module-scoped: Playwright's sync API runs an
    event loop in the main thread while it is open, which later tests' asyncio.run() must not see)."""
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=TIMEOUT_MS)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(chromium), headless=True, args=CHROMIUM_ARGS, timeout=TIMEOUT_MS * 3
        )
        try:
            yield launched
        finally:
            launched.close()


# module-scoped (every dashboard test is in one module): the server and its simulated devices
# stop once the browser tests are done, not at the end of the whole test session
@pytest.fixture(scope="module")
def dashboard(
    chromium: Path, artifacts: Path, keys: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Dashboard]:
    """A real server process with two fleets, simulated devices heartbeating in one of them, and
    signed packages uploaded (``det`` 1.0 and 2.0 approved; ``classifier`` 1.0 and 2.0 pending)."""
    pytest.importorskip("fastapi", reason="the dashboard needs the server extra")
    from edgefleet.opclient.client import FleetClient
    from edgefleet.opclient.config import ClientConfig

    data = tmp_path_factory.mktemp("dashboard-server")
    server = ServerProcess.start(data, keys / "trust", artifacts / "server.log", "--report-interval", "5")
    with contextlib.ExitStack() as stack:
        stack.callback(server.stop)
        token = server.create_token("ops-browser")
        op = stack.enter_context(FleetClient(ClientConfig(server.api_url, token, server.ca_cert)))
        outputs = tmp_path_factory.mktemp("outputs").as_uri()
        op.create_fleet(SIM_FLEET, outputs, description="assembly line A (simulated devices)")
        op.create_fleet(IDLE_FLEET, outputs, description="spares, never enrolled")
        half = len(SIM_DEVICES) // 2
        registered = op.register_devices(
            SIM_FLEET,
            [
                {"DeviceName": name, "Tags": {"site": "north" if i < half else "south"}}
                for i, name in enumerate(SIM_DEVICES)
            ],
        )
        op.register_devices(
            IDLE_FLEET, [{"DeviceName": name, "Tags": {"site": "depot"}} for name in IDLE_DEVICES]
        )
        packages: dict[tuple[str, str], Path] = {}
        out = tmp_path_factory.mktemp("packages")
        for model, version, config in (
            (DEPLOY_MODEL, "1.0", {}),
            (DEPLOY_MODEL, "2.0", {"fail": True}),
            (REVIEW_MODEL, "1.0", {}),
            (REVIEW_MODEL, "2.0", {}),
        ):
            package = build_null(keys, out / f"{model}-{version}", name=model, version=version, **config)
            op.upload_package(package)
            packages[model, version] = package
        for version in ("1.0", "2.0"):
            op.set_approval(DEPLOY_MODEL, version, "Approved")
        simulation = Simulation.start(
            server.api_url,
            [{"DeviceName": d["DeviceName"], "EnrolmentToken": d["EnrolmentToken"]} for d in registered],
            tmp_path_factory.mktemp("simulation"),
            artifacts / "simulate.log",
        )
        stack.callback(simulation.stop)

        def all_heartbeating() -> bool:
            assert simulation.alive(), f"edgefleet simulate exited; log in {simulation.log_path}"
            devices = list(op.list_devices(fleet=SIM_FLEET))
            return len(devices) == len(SIM_DEVICES) and all(d.get("LatestHeartbeat") for d in devices)

        wait_for(all_heartbeating, "every simulated device's first heartbeat", timeout=180)
        yield Dashboard(server, token, op, simulation, artifacts, packages)


@pytest.fixture(scope="module")
def signed_in_state(browser: Any, dashboard: Dashboard) -> dict[str, Any]:
    """The cookies of one login through the form, reused by every test's context."""
    context = browser.new_context(ignore_https_errors=True, viewport=VIEWPORT)
    try:
        context.set_default_timeout(TIMEOUT_MS)
        page = context.new_page()
        login(page, dashboard)
        state: dict[str, Any] = context.storage_state()
        return state
    finally:
        context.close()


def _context_page(
    browser: Any, request: pytest.FixtureRequest, artifacts: Path, state: dict[str, Any] | None
) -> Generator[Any]:
    context = browser.new_context(ignore_https_errors=True, viewport=VIEWPORT, storage_state=state)
    context.set_default_timeout(TIMEOUT_MS)
    context.set_default_navigation_timeout(TIMEOUT_MS)
    page = context.new_page()
    try:
        yield page
    finally:
        if request.node.stash.get(_FAILED, False):
            name = re.sub(r"[^\w.-]+", "_", request.node.name)
            with contextlib.suppress(Exception):  # a screenshot of a crashed page is not news
                page.screenshot(path=str(artifacts / f"FAILED-{name}.png"), full_page=True)
        context.close()


@pytest.fixture
def page(
    browser: Any,
    dashboard: Dashboard,
    signed_in_state: dict[str, Any],
    request: pytest.FixtureRequest,
    artifacts: Path,
) -> Iterator[Any]:
    """A page in a new browser context, signed in as the session's operator."""
    yield from _context_page(browser, request, artifacts, signed_in_state)


@pytest.fixture
def anonymous_page(
    browser: Any, dashboard: Dashboard, request: pytest.FixtureRequest, artifacts: Path
) -> Iterator[Any]:
    """A page in a new browser context without a session cookie."""
    yield from _context_page(browser, request, artifacts, None)


@pytest.fixture
def shoot(artifacts: Path) -> Any:
    """``shoot(page, name)`` checks that the page fits the window's width (1280 px: no horizontal
    scrolling) and saves a (full-page unless ``full_page=False``) screenshot as ``<artifacts>/<name>.png``."""

    def screenshot(page: Any, name: str, *, full_page: bool = True) -> Path:
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"{name}: {overflow} px wider than the {VIEWPORT['width']} px window"
        path = artifacts / f"{name}.png"
        page.screenshot(path=str(path), full_page=full_page)
        return path

    return screenshot
