"""Launch path "qemu": the rig's VMs as plain qemu processes in the rig namespace (the default here).

Same image, kernel command line, MACs and bridges as the vagrant path; what it saves is vagrant's and
libvirt's minutes of overhead (MACHINE.md: `vagrant up` of two nodes 287-344 s, the guests boot in ~33 s).
Faults use QMP: stop/cont to freeze, quit to pull the plug.
"""

from __future__ import annotations

import os
from pathlib import Path

from . import netns, speed
from .config import Node, Paths, Topology
from .image import GuestImage
from .proc import NULL_LOG, Daemon, EventLog, RigError, run, spawn, stop, wait_until
from .qmp import Qmp

BASE_CMDLINE = "root=/dev/vda rw console=ttyS0,115200 panic=-1 quiet systemd.show_status=false"


def kvm_usable() -> bool:
    """True when /dev/kvm can boot stock guest kernels (not the PVM-based /dev/kvm of these machines)."""
    forced = os.environ.get("HACRIG_ACCEL")
    if forced:
        return forced == "kvm"
    return Path("/dev/kvm").exists() and not Path("/sys/module/kvm_pvm").exists()



POWER_PORT_BASE = 4400


def power_port(node: Node) -> int:
    """TCP port of a VM's power-switch monitor on the management network (4400 + the node's host id)."""
    return POWER_PORT_BASE + node.host_id

class QemuLauncher:
    name = "qemu"

    def __init__(self, topology: Topology, paths: Paths, image: GuestImage, log_dir: Path,
                 log: EventLog = NULL_LOG) -> None:
        self.topology = topology
        self.paths = paths
        self.image = image
        self.log_dir = log_dir
        self.log = log
        self.daemons: dict[str, Daemon] = {}  # node name -> its qemu process

    # --- networks -------------------------------------------------------------------------------------
    def prepare(self) -> None:
        ns = self.topology.namespace
        for net in self.topology.networks.values():
            netns.add_bridge(ns, net.bridge, f"{net.host}/{net.prefix}", self.log)

    def bridge(self, net_name: str) -> str:
        return self.topology.networks[net_name].bridge

    def taps(self, node: Node) -> dict[str, str]:
        return {net: node.tap(self.topology.networks[net]) for net in node.networks}

    # --- VMs ------------------------------------------------------------------------------------------
    def vm_dir(self, node: Node) -> Path:
        return self.paths.vms / node.name

    def qmp(self, node: Node) -> Qmp:
        return Qmp(self.vm_dir(node) / "qmp.sock")

    def console_log(self, node: Node) -> Path:
        return self.log_dir / f"console-{node.name}.log"

    def start(self, nodes: list[Node]) -> None:
        for node in nodes:
            self._create_disk(node)
            for net_name, tap in self.taps(node).items():
                netns.add_tap(self.topology.namespace, tap, self.bridge(net_name), self.log)
            self.boot(node)

    def _create_disk(self, node: Node) -> None:
        vm_dir = self.vm_dir(node)
        vm_dir.mkdir(parents=True, exist_ok=True)
        run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(self.image.rootfs),
             str(vm_dir / "disk.qcow2")], timeout=30, log=self.log)

    def boot(self, node: Node) -> Daemon:
        """Start (or restart after power_off) one VM's qemu process."""
        old = self.daemons.get(node.name)
        if old is not None and old.alive():
            raise RigError(f"{node.name} is already running (pid {old.pid})")
        (self.vm_dir(node) / "qmp.sock").unlink(missing_ok=True)
        daemon = spawn(f"qemu-{node.name}", self.command(node), log_file=self.log_dir / f"qemu-{node.name}.log",
                       netns=self.topology.namespace, log=self.log)
        self.daemons[node.name] = daemon
        limit, own = speed.cpu_limit(), speed.vm_cpu_limit()
        if limit is not None:  # a slower host on purpose (HACONTROL_RIG_CPU_LIMIT): every VM in one quota
            speed.limit_processes([daemon.pid], limit, self.log)
        elif own is not None:  # HACONTROL_RIG_VM_CPU: each VM in a quota of its own
            speed.limit_processes([daemon.pid], own, self.log, own=node.name)
        wait_until(f"QMP socket of {node.name}", (self.vm_dir(node) / "qmp.sock").exists, timeout=30,
                   interval=0.1)
        return daemon

    def command(self, node: Node) -> list[str]:
        """The qemu command line of one VM (TCG here, KVM where a stock kernel boots under it)."""
        kvm = kvm_usable()
        vm_dir = self.vm_dir(node)
        cmd = [
            "qemu-system-x86_64", "-name", f"{node.domain},debug-threads=on",
            "-machine", "q35", "-accel", "kvm" if kvm else "tcg,thread=multi", "-cpu", "host" if kvm else "max",
            "-smp", "1", "-m", str(node.memory_mib), "-nographic", "-nodefaults",
            "-chardev", f"file,id=console,path={self.console_log(node)},append=on", "-serial", "chardev:console",
            "-kernel", str(self.image.kernel), "-initrd", str(self.image.initrd),
            "-append", f"{BASE_CMDLINE} {self.topology.kernel_args(node)}",
            # cache=unsafe: the overlay is thrown away at `down`; a power-off fault must not need it intact.
            "-drive", f"file={vm_dir / 'disk.qcow2'},if=virtio,format=qcow2,cache=unsafe,discard=unmap",
            "-qmp", f"unix:{vm_dir / 'qmp.sock'},server=on,wait=off",
            # The rig's "power switch": a second monitor on the management network, which the peer controller's
            # QMP fencer uses (hacontrol's qmp fence method with socket = "tcp:10.50.0.1:<port>").
            "-qmp", f"tcp:{self.topology.networks['mgmt'].host}:{power_port(node)},server=on,wait=off",
            # A hardware watchdog for the guest (i6300esb -> /dev/watchdog); qemu resets the VM when it fires.
            "-device", "i6300esb", "-action", "watchdog=reset",
            "-device", "virtio-rng-pci",
        ]
        for i, (net_name, tap) in enumerate(self.taps(node).items()):
            mac = node.mac(self.topology.networks[net_name])
            cmd += ["-netdev", f"tap,id=n{i},ifname={tap},script=no,downscript=no",
                    # romfile= : no iPXE option ROM; under TCG each one costs boot time for nothing.
                    "-device", f"virtio-net-pci,netdev=n{i},mac={mac},romfile="]
        return cmd

    def adopt(self, daemons: dict[str, Daemon]) -> None:
        """Take over the qemu processes recorded in the state file (a later `rig` invocation)."""
        self.daemons = {name.removeprefix("qemu-"): d for name, d in daemons.items() if name.startswith("qemu-")}

    # --- faults and state -----------------------------------------------------------------------------
    def state(self, node: Node) -> str:
        daemon = self.daemons.get(node.name)
        if daemon is None or not daemon.alive():
            return "off"
        try:
            return self.qmp(node).status()
        except RigError:
            return "unknown"

    def pause(self, node: Node) -> None:
        self.qmp(node).execute("stop")

    def resume(self, node: Node) -> None:
        self.qmp(node).execute("cont")

    def power_off(self, node: Node) -> None:
        """Pull the plug: qemu exits at once, the guest gets no shutdown."""
        daemon = self.daemons.get(node.name)
        if daemon is None or not daemon.alive():
            return
        self.qmp(node).execute("quit")
        wait_until(f"{node.name} powered off", lambda: not daemon.alive(), timeout=20, interval=0.1)

    def power_on(self, node: Node) -> None:
        self.boot(node)

    def stop(self) -> None:
        for name, daemon in self.daemons.items():
            if daemon.alive():
                try:
                    self.power_off(self.topology.node(name))
                except RigError:
                    pass
            stop(daemon, timeout=10, log=self.log)
