"""What the driver does inside the guests after they boot: shelf login, hacontrol install, multipathd.

Every step is idempotent, so `rig provision` can run them again at any time (and after `power-on`).
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from .config import Node, Paths, Topology
from .guest import Guest, quote
from .proc import NULL_LOG, EventLog, RigError, run, wait_until

SCRIPTS = Path(__file__).resolve().parent / "guest_scripts"
VENV = "/opt/hacontrol/venv"
GUEST_WHEELS = "/opt/hacontrol/wheels"


@dataclass(frozen=True)
class JbodDisk:
    """One shelf disk as one controller sees it."""

    name: str  # disk0, disk1, ... (from the serial hacrig-<name>)
    device: str  # /dev/sdX (may differ between controllers and boots)
    wwid: str  # the kernel's wwid, e.g. naa.60000000...
    by_id: str  # /dev/disk/by-id/wwn-0x...: the stable path to use

    def to_json(self) -> dict:
        return asdict(self)


def login_jbod(guest: Guest, topology: Topology) -> None:
    """Log a controller into the shelf (a node record with startup=automatic survives power cycles).

    After a power-on iscsid logs in by itself; whichever login comes second is told the session exists,
    which is the state we want, not an error.
    """
    portal = f"{topology.jbod.portal}:{topology.jbod.port}"
    iqn = topology.jbod_iqn
    script = "\n".join([
        "set -e",
        f"iscsiadm -m session 2>/dev/null | grep -q {quote(iqn)} && exit 0",
        f"iscsiadm -m node -T {quote(iqn)} -p {quote(portal)} >/dev/null 2>&1 || "
        f"iscsiadm -m node -o new -T {quote(iqn)} -p {quote(portal)} >/dev/null",
        f"iscsiadm -m node -T {quote(iqn)} -p {quote(portal)} -o update -n node.startup -v automatic",
        # iscsid's own boot-time login (startup=automatic) may win the race: exit 15 is "session exists"
        f"out=$(iscsiadm -m node -T {quote(iqn)} -p {quote(portal)} --login 2>&1) || rc=$?",
        'case "${rc:-0}" in 0|15) exit 0;; esac',
        f"iscsiadm -m session 2>/dev/null | grep -q {quote(iqn)} && exit 0",
        'echo "$out" >&2; exit "$rc"',
    ])
    guest.run(script, timeout=60)


def jbod_disks(guest: Guest) -> list[JbodDisk]:
    out = guest.run("sh -s", input_text=(SCRIPTS / "jbod_disks.sh").read_text(), timeout=60).stdout
    disks = []
    for line in out.splitlines():
        device, wwid, by_id, serial = line.split()
        disks.append(JbodDisk(name=serial.removeprefix("hacrig-"), device=device, wwid=wwid, by_id=by_id))
    return sorted(disks, key=lambda d: d.name)


def wait_jbod(guest: Guest, topology: Topology, timeout: float = 60) -> list[JbodDisk]:
    found: list[JbodDisk] = []

    def complete() -> bool:
        found[:] = jbod_disks(guest)
        return len(found) == len(topology.jbod.disks) and all(d.by_id != "none" for d in found)

    wait_until(f"JBOD disks on {guest.name}", complete, timeout=timeout, interval=1.0)
    return found


def build_wheel(paths: Paths, log: EventLog = NULL_LOG) -> Path:
    """The hacontrol wheel from the checkout as it is now (uncommitted changes included)."""
    shutil.rmtree(paths.wheels, ignore_errors=True)
    paths.wheels.mkdir(parents=True)
    source = _source_copy(paths)
    base = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(paths.wheels)]
    # Without build isolation no setuptools download is needed; fall back to isolation if the local
    # setuptools cannot build this pyproject.
    proc = run([*base, "--no-build-isolation", str(source)], timeout=300, check=False, log=log)
    if proc.returncode != 0:
        run([*base, str(source)], timeout=600, log=log)
    wheels = sorted(paths.wheels.glob("hacontrol-*.whl"))
    if len(wheels) != 1:
        raise RigError(f"expected one hacontrol wheel in {paths.wheels}, found {wheels}")
    return wheels[0]


def _source_copy(paths: Paths) -> Path:
    """A copy of what the wheel is built from: setuptools writes build/ and *.egg-info next to its input,
    and the checkout is shared with other work."""
    source = paths.run / "src"
    shutil.rmtree(source, ignore_errors=True)
    source.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build")
    for name in ("pyproject.toml", "README.md", "LICENSE", "setup.cfg", "setup.py", "MANIFEST.in"):
        if (paths.repo / name).exists():
            shutil.copy2(paths.repo / name, source / name)
    if not (source / "README.md").exists():
        (source / "README.md").write_text("hacontrol\n")  # pyproject names it as the long description
    shutil.copytree(paths.repo / "hacontrol", source / "hacontrol", ignore=ignore)
    return source


def install_hacontrol(guest: Guest, wheel: Path, paths: Paths) -> str:
    """Replace the hacontrol in the guest venv with `wheel`; returns the installed version line."""
    guest.run(f"rm -f {GUEST_WHEELS}/hacontrol-*.whl", timeout=30)
    guest.copy_to([wheel], f"{GUEST_WHEELS}/")
    unit = paths.repo / "systemd" / "hacontrol.service"
    if unit.exists():  # comes with the agent; installed but not enabled, tests start it when they need it
        guest.copy_to([unit], "/etc/systemd/system/hacontrol.service")
        guest.run("systemctl daemon-reload", timeout=60)
    guest_wheel = f"{GUEST_WHEELS}/{wheel.name}"
    # --no-deps: the dependencies were installed into the venv when the image was built (from the same
    # pyproject, which is part of the image's cache key); the check proves they still satisfy it.
    guest.run(f"{VENV}/bin/pip install --quiet --no-index --no-deps --force-reinstall {quote(guest_wheel)}",
              timeout=300)
    guest.run(f"{VENV}/bin/python -", input_text=(SCRIPTS / "check_requirements.py").read_text(), timeout=60)
    return guest.run(f"{VENV}/bin/pip show hacontrol | head -2 | tr '\\n' ' '", timeout=60).stdout.strip()


def setup_node(guest: Guest, node: Node, topology: Topology, wheel: Path | None, paths: Paths) -> dict:
    """Everything one node needs after boot; returns what later tests need to know about it."""
    result: dict = {"node": node.name}
    if node.role == "controller":
        login_jbod(guest, topology)
        result["jbod"] = [d.to_json() for d in wait_jbod(guest, topology)]
        if wheel is not None:
            result["hacontrol"] = install_hacontrol(guest, wheel, paths)
    else:
        guest.run("systemctl start multipathd.service", timeout=60)
        if wheel is not None:  # the probe initiator runs here too (hactl probe io --device on multipath)
            result["hacontrol"] = install_hacontrol(guest, wheel, paths)
    return result
