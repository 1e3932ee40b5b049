"""The rig's network namespace: bridges, taps, host-side addresses, and private mount views for daemons.

Confinement: every private-range address of the rig is configured here, inside the namespace; the root
namespace never gets one. Daemons that insist on fixed system paths (libvirtd: /run/libvirt, /etc/libvirt,
/var/lib/libvirt; tgtd: /run/tgtd) run in a private mount namespace where those paths are bind mounts of
directories under .rig/, so they neither touch nor collide with the host's.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from .proc import NULL_LOG, EventLog, RigError, run


def exists(namespace: str) -> bool:
    return Path("/run/netns", namespace).exists()


def create(namespace: str, log: EventLog = NULL_LOG) -> None:
    if exists(namespace):
        raise RigError(f"network namespace {namespace} already exists: is a rig up? (vagrant/rig status / down)")
    run(["ip", "netns", "add", namespace], timeout=10, log=log)
    run(["ip", "-n", namespace, "link", "set", "lo", "up"], timeout=10, log=log)
    # IPv6 is unused; without it no DAD or router solicitations clutter captures.
    run(["sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"],
        netns=namespace, timeout=10, log=log)


def pids(namespace: str) -> list[int]:
    if not exists(namespace):
        return []
    proc = run(["ip", "netns", "pids", namespace], timeout=10, check=False)
    return [int(p) for p in proc.stdout.split()]


def delete(namespace: str, log: EventLog = NULL_LOG) -> None:
    if exists(namespace):
        run(["ip", "netns", "del", namespace], timeout=10, log=log)


def add_bridge(namespace: str, bridge: str, address: str | None, log: EventLog = NULL_LOG) -> None:
    # STP off and no forwarding delay: ports forward the moment a VM's tap comes up.
    run(["ip", "-n", namespace, "link", "add", bridge, "type", "bridge", "stp_state", "0", "forward_delay", "0"],
        timeout=10, log=log)
    if address:
        add_address(namespace, bridge, address, log)
    run(["ip", "-n", namespace, "link", "set", bridge, "up"], timeout=10, log=log)


def add_address(namespace: str, device: str, address: str, log: EventLog = NULL_LOG) -> None:
    run(["ip", "-n", namespace, "addr", "replace", address, "dev", device], timeout=10, log=log)


def add_tap(namespace: str, tap: str, bridge: str, log: EventLog = NULL_LOG) -> None:
    run(["ip", "-n", namespace, "tuntap", "add", "dev", tap, "mode", "tap"], timeout=10, log=log)
    run(["ip", "-n", namespace, "link", "set", tap, "master", bridge, "up"], timeout=10, log=log)


def bridge_of(namespace: str, device: str) -> str | None:
    proc = run(["ip", "-n", namespace, "-o", "link", "show", device], timeout=10, check=False)
    words = proc.stdout.split()
    return words[words.index("master") + 1] if "master" in words else None


def private_mounts_command(binds: dict[Path, str], command: list[str]) -> list[str]:
    """Wrap `command` so it runs with a fresh /run and the given directories bind-mounted over system paths.

    A tmpfs over /run means mount points like /run/libvirt are created in memory, not on the host's disk.
    `unshare` and `sh` exec, so the PID of the returned command line is the daemon itself.
    """
    script = ["set -e", "mount -t tmpfs -o mode=0755 hacrig-run /run"]
    for source, target in binds.items():
        source.mkdir(parents=True, exist_ok=True)
        if not target.startswith("/run/") and not Path(target).is_dir():
            raise RigError(f"{target} does not exist on the host; install the package that provides it")
        script.append(f"mkdir -p {shlex.quote(target)}")
        script.append(f"mount --bind {shlex.quote(str(source))} {shlex.quote(target)}")
    script.append('exec "$@"')
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", "\n".join(script), "hacrig", *command]


def enter_command(pid: int, command: list[str]) -> list[str]:
    """Run `command` in the mount and network namespaces of a daemon started by private_mounts_command."""
    return ["nsenter", "--target", str(pid), "--mount", "--net", *command]
