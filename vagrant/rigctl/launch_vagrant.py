"""Launch path "vagrant": `vagrant up` (vagrant-libvirt) against the rig's private libvirtd.

The driver prepares what the Vagrantfile needs and writes it to .rig/vagrant.json: the box (made from the
cached image), the key, the libvirt socket, the kernel command line of each node. The libvirt networks are
defined beforehand with the rig's bridge names and fixed DHCP leases; vagrant-libvirt finds them by address
and attaches the VMs. vagrant's own state (VAGRANT_HOME, the .vagrant dotfile) lives under .rig/ too.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .config import VAGRANT_DIR, Node, Paths, Topology
from .image import GuestImage, ensure_box
from .launch_qemu import BASE_CMDLINE, kvm_usable
from .libvirt import POOL, PrivateLibvirt
from .proc import NULL_LOG, Daemon, EventLog, RigError, run, wait_until


class VagrantLauncher:
    name = "vagrant"

    def __init__(self, topology: Topology, paths: Paths, image: GuestImage, log_dir: Path,
                 log: EventLog = NULL_LOG) -> None:
        self.topology = topology
        self.paths = paths
        self.image = image
        self.log_dir = log_dir
        self.log = log
        self.libvirt = PrivateLibvirt(topology, paths, log_dir, log)
        self.daemons: list[Daemon] = []

    # --- networks -------------------------------------------------------------------------------------
    def prepare(self) -> list[Daemon]:
        self.daemons = self.libvirt.start()
        self.libvirt.define_networks()
        self.libvirt.define_pool()
        return self.daemons

    def adopt(self, daemons: dict[str, Daemon]) -> None:
        self.daemons = [d for name, d in daemons.items() if name in ("virtlogd", "libvirtd")]

    # --- VMs ------------------------------------------------------------------------------------------
    def env(self) -> dict[str, str]:
        return {**os.environ, "VAGRANT_HOME": str(self.paths.vagrant_home),
                "VAGRANT_DOTFILE_PATH": str(self.paths.run / "vagrant-dot"), "VAGRANT_CWD": str(VAGRANT_DIR),
                "HACRIG_SETTINGS": str(self.paths.vagrant_settings), "VAGRANT_DEFAULT_PROVIDER": "libvirt",
                "VAGRANT_CHECKPOINT_DISABLE": "1", "VAGRANT_BOX_UPDATE_CHECK_DISABLE": "1"}

    def vagrant(self, *args: str, timeout: float, check: bool = True, log_name: str = "vagrant.log"):
        proc = run(["vagrant", *args], netns=self.topology.namespace, env=self.env(), timeout=timeout, check=False,
                   cwd=VAGRANT_DIR, log=self.log)
        # Progress meters redraw one line hundreds of times; the log keeps everything else.
        stdout = "\n".join(line for line in proc.stdout.splitlines() if "Progress:" not in line)
        with (self.log_dir / log_name).open("a") as f:
            f.write(f"$ vagrant {' '.join(args)}  (exit {proc.returncode})\n{stdout}\n{proc.stderr}\n")
        if check and proc.returncode != 0:
            raise RigError(f"vagrant {' '.join(args)} failed (exit {proc.returncode}); see "
                           f"{self.log_dir / log_name}\n{proc.stderr.strip()[-1500:]}")
        return proc

    def write_settings(self) -> None:
        """.rig/vagrant.json: everything machine-specific the Vagrantfile needs (it holds no paths itself)."""
        nodes = {}
        for node in self.topology.nodes.values():
            nics = [{"network": self.topology.networks[n].libvirt_name, "mac": node.mac(self.topology.networks[n]),
                     "ip": node.address(self.topology.networks[n]), "management": self.topology.networks[n].dhcp,
                     "cidr": str(self.topology.networks[n].cidr)}
                    for n in node.networks]
            nodes[node.name] = {"memory_mib": node.memory_mib, "nics": nics,
                                "cmd_line": f"{BASE_CMDLINE} {self.topology.kernel_args(node)}"}
        settings = {"box": self.image.box_name, "key": str(self.image.key), "libvirt_socket": str(self.libvirt.socket),
                    "accel": "kvm" if kvm_usable() else "tcg", "kernel": str(self.image.kernel),
                    "initrd": str(self.image.initrd), "storage_pool": POOL, "domain_prefix": "hacrig-",
                    "console_dir": str(self.log_dir), "nodes": nodes}
        self.paths.vagrant_settings.write_text(json.dumps(settings, indent=2))

    def add_box(self) -> None:
        box = ensure_box(self.image, self.log)
        listed = self.vagrant("box", "list", timeout=120, check=False).stdout
        if self.image.box_name not in listed:
            self.vagrant("box", "add", "--name", self.image.box_name, str(box), timeout=300)

    def start(self, nodes: list[Node]) -> None:
        self.write_settings()  # first: the Vagrantfile refuses to load without it, even for `vagrant box`
        self.add_box()
        self.vagrant("up", "--provider", "libvirt", *[n.name for n in nodes], timeout=1500)

    def console_log(self, node: Node) -> Path:
        return self.log_dir / f"console-{node.name}.log"

    def taps(self, node: Node) -> dict[str, str]:
        by_mac = self.libvirt.interfaces(node.domain)
        return {n: by_mac[node.mac(self.topology.networks[n])] for n in node.networks
                if node.mac(self.topology.networks[n]) in by_mac}

    # --- faults and state -----------------------------------------------------------------------------
    def state(self, node: Node) -> str:
        return self.libvirt.domain_state(node.domain)

    def pause(self, node: Node) -> None:
        self.libvirt.virsh("suspend", node.domain)

    def resume(self, node: Node) -> None:
        self.libvirt.virsh("resume", node.domain)

    def power_off(self, node: Node) -> None:
        """virsh destroy: the qemu process is killed, the guest gets no shutdown."""
        if self.state(node) != "off":
            self.libvirt.virsh("destroy", node.domain)
        wait_until(f"{node.name} powered off", lambda: self.state(node) == "off", timeout=20, interval=0.2)

    def power_on(self, node: Node) -> None:
        self.libvirt.virsh("start", node.domain)

    def stop(self) -> None:
        if self.libvirt.socket.exists() and any(d.alive() for d in self.daemons):
            if self.paths.vagrant_settings.exists():
                self.vagrant("destroy", "-f", timeout=300, check=False)
            self.libvirt.remove_everything()
        self.libvirt.stop(self.daemons)
