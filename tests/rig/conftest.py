"""Fixtures for the VM rig (vagrant/rig). Puts vagrant/ on sys.path so tests can `from rigctl import Rig`.

The rig takes two minutes to come up, so its tests run only when asked for: `pytest tests/rig` (any path under
tests/rig on the command line) or HACONTROL_RIG_TESTS=1. A rig that is already up (e.g. started by CI with
`vagrant/rig up`) is reused and left running; a rig the fixture starts is torn down at the end, failure or not.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

VAGRANT_DIR = Path(__file__).resolve().parents[2] / "vagrant"
sys.path.insert(0, str(VAGRANT_DIR))

from rigctl import Rig, netns  # noqa: E402 - needs the path above

from tests.rig import diagnostics  # noqa: E402

NEEDED_TOOLS = ("qemu-system-x86_64", "qemu-img", "mmdebstrap", "tgtd", "java", "nft", "iscsi-inq", "ssh")


def _explicitly_selected(config: pytest.Config) -> bool:
    rig_dir = Path(__file__).resolve().parent
    for arg in config.args:
        path = Path(arg.split("::")[0]).resolve()
        if path == rig_dir or rig_dir in path.parents:
            return True
    return os.environ.get("HACONTROL_RIG_TESTS") == "1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _explicitly_selected(config):
        up = Rig()
        diagnostics.apply_time_limits(items, up.speed_factor if up.state is not None else 1.0)
        return
    skip = pytest.mark.skip(reason="VM rig tests run with `pytest tests/rig` or HACONTROL_RIG_TESTS=1")
    for item in items:
        if "rig" in item.keywords:
            item.add_marker(skip)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    diagnostics.mark_start(item)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failed rig test (a timeout included) carries the journals, the rig log and the cluster's state."""
    outcome = yield
    report = outcome.get_result()
    if not report.failed or "rig" not in item.keywords or report.when == "teardown":
        return
    rig = item.funcargs.get("rig") if hasattr(item, "funcargs") else None
    rig = rig if rig is not None else Rig(quiet=True)
    if rig.state is None:
        return
    report.sections.append(("rig diagnostics", diagnostics.collect(item, rig)))


def _missing_prerequisites() -> list[str]:
    missing = [tool for tool in NEEDED_TOOLS if shutil.which(tool) is None]
    if os.geteuid() != 0:
        missing.append("root")
    return missing


@pytest.fixture(scope="session")
def rig() -> Iterator[Rig]:
    missing = _missing_prerequisites()
    if missing:
        pytest.skip(f"the VM rig needs: {', '.join(missing)} (see vagrant/README.md for the package list)")
    existing = Rig()
    if existing.state is not None and existing.state.phase == "up" and netns.exists(existing.namespace):
        yield existing  # someone else's rig: use it, leave it up
        return
    if existing.state is not None:  # half-started, or left by a crash or a reboot: clear it before starting ours
        existing.down()
    started = Rig()
    try:
        started.up(launcher=os.environ.get("HACRIG_LAUNCHER", "qemu"))
        yield started
    finally:
        started.down()


@pytest.fixture(scope="module")
def lio(rig: Rig) -> Iterator[Any]:
    """Both controllers' LIO configured from tests/rig/test_lio_kit.py's CONFIG (per test module), then removed."""
    from tests.rig.test_lio_kit import lio_environment

    yield from lio_environment(rig)


@pytest.fixture(scope="module")
def initiator(rig: Rig) -> Any:
    """open-iscsi and libiscsi initiators inside the rig's namespace."""
    from tests.rig.test_lio_kit import Initiator

    return Initiator(rig.namespace)
