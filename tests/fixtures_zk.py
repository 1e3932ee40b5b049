"""pytest fixtures around a real ZooKeeper ensemble (Debian's zookeeper package), started once per session.

Each test gets its own chroot, deleted afterwards. Nothing here fakes ZooKeeper.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from hacontrol.lab.zookeeper import Ensemble


def _have_zookeeper() -> bool:
    return Path("/usr/share/java/zookeeper.jar").exists() and shutil.which("java") is not None


@pytest.fixture(scope="session")
def zk_ensemble(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ensemble]:
    if not _have_zookeeper():
        pytest.fail("ZooKeeper is not installed: run .ci/run (it installs Debian's zookeeper package)")
    ensemble = Ensemble(tmp_path_factory.mktemp("zk"), tick_ms=250, min_session_ms=500, max_session_ms=20000)
    ensemble.start()
    yield ensemble
    ensemble.close()


@pytest.fixture
def zk_ensemble_healthy(zk_ensemble: Ensemble) -> Iterator[Ensemble]:
    """The session ensemble, with every member restarted after the test if the test stopped some."""
    yield zk_ensemble
    for m in zk_ensemble.members:
        if m.process is None or m.process.poll() is not None:
            zk_ensemble.start_member(m.myid)
    zk_ensemble.wait_settled()


@pytest.fixture
def zk_chroot(zk_ensemble: Ensemble, request: pytest.FixtureRequest) -> Iterator[str]:
    from kazoo.client import KazooClient

    name = request.node.name.replace("[", "-").replace("]", "").replace("/", "-")[:40]
    chroot = f"/t/{name}-{uuid.uuid4().hex[:8]}"
    yield chroot
    client = KazooClient(hosts=zk_ensemble.connect_string, timeout=5)
    try:
        client.start(timeout=10)
        client.delete(chroot, recursive=True)
    except Exception:  # cleanup is best effort: a broken ensemble is reported by the test itself
        pass
    finally:
        client.stop()
        client.close()
