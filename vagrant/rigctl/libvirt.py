"""A private libvirtd for the vagrant launch path: its own network namespace and its own file tree.

libvirtd hard-codes /run/libvirt, /etc/libvirt, /var/lib/libvirt, /var/log/libvirt and /var/cache/libvirt.
Here each is a bind mount of a directory under .rig/libvirt/ inside a private mount namespace, so: the
domains, networks, dnsmasq leases and storage pool it defines never land in system locations (nothing in
/var/lib/libvirt/images after `down`), it cannot collide with a host's own libvirtd, and removing .rig/
removes every trace. Clients reach it at qemu:///system?socket=<.rig/libvirt/run/libvirt-sock>.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from xml.sax.saxutils import quoteattr

from .config import Network, Paths, Topology
from .netns import enter_command, private_mounts_command
from .proc import NULL_LOG, Daemon, EventLog, RigError, read_pidfile, run, spawn, stop, wait_until

SYSTEM_DIRS = {"etc": "/etc/libvirt", "run": "/run/libvirt", "lib": "/var/lib/libvirt",
               "log": "/var/log/libvirt", "cache": "/var/cache/libvirt"}
POOL = "hacrig"
MAX_SOCKET_PATH = 100  # sun_path holds 108 bytes


class PrivateLibvirt:
    def __init__(self, topology: Topology, paths: Paths, log_dir: Path, log: EventLog = NULL_LOG) -> None:
        self.topology = topology
        self.paths = paths
        self.root = paths.libvirt
        self.log_dir = log_dir
        self.log = log

    @property
    def socket(self) -> Path:
        return self.root / "run" / "libvirt-sock"

    @property
    def uri(self) -> str:
        return f"qemu:///system?socket={self.socket}"

    # --- daemons --------------------------------------------------------------------------------------
    def start(self) -> list[Daemon]:
        if len(str(self.socket)) > MAX_SOCKET_PATH:
            raise RigError(f"libvirt socket path too long for a unix socket: {self.socket}; use a shorter path")
        self._prepare_tree()
        binds = {self.root / key: target for key, target in SYSTEM_DIRS.items()}
        ns = self.topology.namespace
        virtlogd = spawn("virtlogd", private_mounts_command(binds, ["virtlogd"]),
                         log_file=self.log_dir / "virtlogd.log", netns=ns, log=self.log)
        wait_until("virtlogd socket", (self.root / "run" / "virtlogd-sock").exists, timeout=20,
                   interval=0.1)
        # libvirtd joins virtlogd's mount and network namespaces so both see the same /run/libvirt.
        libvirtd = spawn("libvirtd", enter_command(virtlogd.pid, ["libvirtd", "--pid-file",
                                                                  "/run/libvirt/libvirtd.pid"]),
                         log_file=self.log_dir / "libvirtd.out", log=self.log)
        read_pidfile(self.root / "run" / "libvirtd.pid", timeout=30)
        wait_until("libvirtd answers", lambda: self.virsh("version", check=False).returncode == 0, timeout=30,
                   interval=0.3)
        return [virtlogd, libvirtd]

    def _prepare_tree(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
        for key in SYSTEM_DIRS:
            if key != "etc":
                (self.root / key).mkdir(parents=True, exist_ok=True)
        shutil.copytree("/etc/libvirt", self.root / "etc", symlinks=True)
        # The package's "default" NAT network would be autostarted; the rig defines its own.
        for path in (self.root / "etc" / "qemu" / "networks").rglob("*.xml"):
            path.unlink()
        with (self.root / "etc" / "qemu.conf").open("a") as f:
            # Images live under the checkout (root-owned); no AppArmor/SELinux on the rig's hosts.
            f.write('\nuser = "root"\ngroup = "root"\nsecurity_driver = "none"\nremember_owner = 0\n')
        with (self.root / "etc" / "libvirtd.conf").open("a") as f:
            f.write('\nlog_outputs = "3:file:/var/log/libvirt/libvirtd.log"\n')

    def stop(self, daemons: list[Daemon]) -> None:
        # libvirtd first: it talks to virtlogd while shutting down.
        for daemon in sorted(daemons, key=lambda d: d.name != "libvirtd"):
            stop(daemon, timeout=15, log=self.log)

    # --- objects --------------------------------------------------------------------------------------
    def virsh(self, *args: str, check: bool = True, timeout: float = 60):
        return run(["virsh", "-q", "-c", self.uri, *args], timeout=timeout, check=check, log=self.log)

    def define_networks(self) -> None:
        for net in self.topology.networks.values():
            xml_path = self.root / f"net-{net.name}.xml"
            xml_path.write_text(self.network_xml(net))
            self.virsh("net-define", str(xml_path))
            self.virsh("net-start", net.libvirt_name)

    def network_xml(self, net: Network) -> str:
        """An isolated network (no <forward>) on the rig's bridge name; DHCP with fixed leases on mgmt only."""
        hosts = ""
        if net.dhcp:
            entries = "".join(
                f"<host mac={quoteattr(n.mac(net))} name={quoteattr(n.name)} ip={quoteattr(n.address(net))}/>"
                for n in self.topology.nodes.values() if net.name in n.networks)
            first = net.cidr.network_address + 200
            last = net.cidr.network_address + 250
            hosts = f"<dhcp><range start='{first}' end='{last}'/>{entries}</dhcp>"
        return (f"<network><name>{net.libvirt_name}</name>"
                f"<bridge name='{net.bridge}' stp='off' delay='0'/>"
                f"<ip address='{net.host}' netmask='{net.cidr.netmask}'>{hosts}</ip></network>\n")

    def define_pool(self) -> None:
        self.paths.pool.mkdir(parents=True, exist_ok=True)
        xml = (f"<pool type='dir'><name>{POOL}</name><target><path>{self.paths.pool}</path></target></pool>\n")
        xml_path = self.root / "pool.xml"
        xml_path.write_text(xml)
        self.virsh("pool-define", str(xml_path))
        self.virsh("pool-start", POOL)

    def domain_state(self, domain: str) -> str:
        proc = self.virsh("domstate", domain, check=False)
        if proc.returncode != 0:
            return "absent"
        state = proc.stdout.strip()
        return {"shut off": "off", "crashed": "off"}.get(state, state)

    def interfaces(self, domain: str) -> dict[str, str]:
        """MAC -> tap name, from `virsh domiflist`."""
        result = {}
        for line in self.virsh("domiflist", domain).stdout.splitlines():
            words = line.split()
            if len(words) >= 5:
                result[words[4].lower()] = words[0]
        return result

    def remove_everything(self) -> None:
        """Undefine every domain, network, volume and pool this daemon knows (it only knows the rig's)."""
        for domain in self._names("list", "--all", "--name"):
            self.virsh("destroy", domain, check=False)
            self.virsh("undefine", domain, "--nvram", check=False)
        for network in self._names("net-list", "--all", "--name"):
            self.virsh("net-destroy", network, check=False)
            self.virsh("net-undefine", network, check=False)
        for pool in self._names("pool-list", "--all", "--name"):
            self.virsh("pool-start", pool, check=False)
            for volume in self._names("vol-list", pool):
                self.virsh("vol-delete", "--pool", pool, volume.split()[0], check=False)
            self.virsh("pool-destroy", pool, check=False)
            self.virsh("pool-undefine", pool, check=False)

    def _names(self, *args: str) -> list[str]:
        proc = self.virsh(*args, check=False)
        return [line.strip() for line in proc.stdout.splitlines() if line.strip()]
