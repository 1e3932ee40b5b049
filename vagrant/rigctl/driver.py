"""class Rig: the two-controller fault-injection rig as a Python object (vagrant/rig is its CLI).

    rig = Rig()
    rig.up()                       # or Rig().up(launcher="vagrant")
    rig.smoke()["ok"]
    rig.partition("ctrl-a", "zk"); ...; rig.heal()
    rig.down()

A Rig built in a later process picks up the running rig from .rig/state.json.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from . import faults, host, image, netns, nodes, speed, zookeeper
from .config import Paths, Topology, load_topology
from .guest import Guest, Ssh
from .launch_qemu import QemuLauncher
from .launch_vagrant import VagrantLauncher
from .proc import EventLog, RigError, stop, wait_until
from .smoke import run_smoke
from .state import RigState, exclusive

LAUNCHERS = ("qemu", "vagrant")
DEFAULT_LAUNCHER = "qemu"  # measured faster here; see vagrant/README.md
BOOT_TIMEOUT_S = 420  # three TCG guests booting on two cores, with the host side starting beside them


class Rig:
    def __init__(self, paths: Paths | None = None, quiet: bool = False) -> None:
        self.paths = paths or Paths.default()
        self.topology: Topology = load_topology()
        self.quiet = quiet
        self.state: RigState | None = RigState.load(self.paths.state_file)
        self.log = EventLog(self._log_file(), quiet)
        self._launcher: QemuLauncher | VagrantLauncher | None = None

    def _log_file(self) -> Path | None:
        return Path(self.state.log_dir) / "rig.jsonl" if self.state else None

    # --- what tests need to know ----------------------------------------------------------------------
    @property
    def namespace(self) -> str:
        """Run the host-side probe initiator here: `ip netns exec <namespace> ...`."""
        return self.topology.namespace

    @property
    def speed_factor(self) -> float:
        """How much slower than the reference machine this host runs the guests (>= 1; see rigctl.speed)."""
        override = os.environ.get("HACONTROL_RIG_SPEED_FACTOR", "")
        if override:
            return max(1.0, float(override))
        return float(self.state.speed.get("factor", 1.0)) if self.state else 1.0

    def scaled(self, seconds: float) -> float:
        """A wait on a guest, stretched by the measured speed factor."""
        return speed.scaled(seconds, self.speed_factor)

    @property
    def log_dir(self) -> Path | None:
        return Path(self.state.log_dir) if self.state else None

    @property
    def zk_connect(self) -> str:
        """The ZooKeeper connect string as the guests (and the namespace) see it."""
        return self.topology.zookeeper.connect_string

    @property
    def controllers(self) -> list[str]:
        return [n.name for n in self.topology.controllers]

    @property
    def has_initiator_vm(self) -> bool:
        return bool(self.state) and any(self.topology.node(n).role == "initiator" for n in self.state.nodes)

    @property
    def addresses(self) -> dict[str, dict[str, str]]:
        """node -> network -> address, e.g. addresses["ctrl-a"]["san"] == "10.50.1.11"."""
        return {n.name: {net: n.address(self.topology.networks[net]) for net in n.networks}
                for n in self.topology.nodes.values()}

    def address(self, node: str, network: str = "mgmt") -> str:
        return self.addresses[node][network]

    @property
    def host_addresses(self) -> dict[str, str]:
        """The rig namespace's own address on each network (the probe initiator's is host_addresses['san'])."""
        return {name: net.host for name, net in self.topology.networks.items()}

    @property
    def jbod(self) -> dict[str, list[dict]]:
        """controller -> its view of the shelf: [{name, device, wwid, by_id}, ...] (recorded at up/provision)."""
        if not self.state:
            return {}
        return {name: g.get("jbod", []) for name, g in self.state.guests.items() if "jbod" in g}

    @property
    def jbod_wwns(self) -> dict[str, str]:
        """disk name -> WWN (the same on both controllers; smoke checks it)."""
        views = list(self.jbod.values())
        return {d["name"]: d["wwid"] for d in views[0]} if views else {}

    def jbod_paths(self, node: str) -> dict[str, str]:
        """disk name -> /dev/disk/by-id/wwn-... on that controller."""
        return {d["name"]: d["by_id"] for d in self.jbod.get(node, [])}

    @property
    def ssh_key(self) -> Path:
        return image.GuestImage(Path(self._require_state().image_dir)).key

    # --- guests ---------------------------------------------------------------------------------------
    def _ssh(self) -> Ssh:
        return Ssh(self.namespace, self.ssh_key, self.paths.run / "ssh")

    def guest(self, node: str) -> Guest:
        self.topology.node(node)
        return Guest(node, self.address(node), self._ssh(), self.log)

    def ssh(self, node: str, cmd: str, timeout: float = 60, check: bool = False,
            input_text: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run a shell command in a guest as root."""
        return self.guest(node).run(cmd, timeout=timeout, check=check, input_text=input_text)

    def ssh_argv(self, node: str, cmd: str | None = None) -> list[str]:
        return self._ssh().argv(self.address(node), cmd, tty=cmd is None)

    def copy_to(self, node: str, src: Path | list[Path], dst: str) -> None:
        self.guest(node).copy_to(src if isinstance(src, list) else [src], dst)

    # --- lifecycle ------------------------------------------------------------------------------------
    def up(self, launcher: str = DEFAULT_LAUNCHER, initiator_vm: bool = True, rebuild_image: bool = False) -> dict:
        """Bring the whole rig up; returns the state summary (with up_seconds)."""
        with exclusive(self.paths.lock_file, "up"):
            t0 = time.monotonic()
            state = self._new_state(launcher, initiator_vm, rebuild_image)
            try:
                host.start(self.topology, self.paths, state, self.launcher, self.log)
                self._mark(state, "host_side", t0)
                self._start_vms(state)
                self._mark(state, "vms_started", t0)
                self._finish(state, t0)
            except BaseException as exc:
                self.log("up.failed", error=str(exc)[:500])
                raise
            return self.status()

    def prepare(self, initiator_vm: bool = True, rebuild_image: bool = False) -> dict:
        """Everything `up --launcher vagrant` does before `vagrant up`: for running vagrant by hand."""
        with exclusive(self.paths.lock_file, "prepare"):
            t0 = time.monotonic()
            state = self._new_state("vagrant", initiator_vm, rebuild_image)
            host.start(self.topology, self.paths, state, self.launcher, self.log)
            launcher = self.launcher
            assert isinstance(launcher, VagrantLauncher)
            launcher.write_settings()
            launcher.add_box()
            state.phase = "prepared"
            self._mark(state, "prepared", t0)
            return self.status()

    def _new_state(self, launcher: str, initiator_vm: bool, rebuild_image: bool) -> RigState:
        if launcher not in LAUNCHERS:
            raise RigError(f"unknown launcher {launcher!r}; choose one of {', '.join(LAUNCHERS)}")
        if self.state is not None:
            raise RigError(f"a rig is already {self.state.phase} (run {self.state.run_id}); `vagrant/rig down` first")
        if netns.exists(self.namespace):
            raise RigError(f"namespace {self.namespace} exists without a rig state; `vagrant/rig down` removes it")
        run_id = time.strftime("%Y%m%d-%H%M%S")
        log_dir = self.paths.logs / run_id
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log = EventLog(log_dir / "rig.jsonl", self.quiet)
        t0 = time.monotonic()
        img = image.ensure_image(self.paths, self.log, rebuild=rebuild_image)
        chosen = [n.name for n in self.topology.nodes.values() if initiator_vm or n.role == "controller"]
        self.state = RigState(run_id=run_id, launcher=launcher, log_dir=str(log_dir), image_dir=str(img.directory),
                              nodes=chosen, started_at=time.time())
        self.state.timings["image"] = round(time.monotonic() - t0, 1)
        self.state.save(self.paths.state_file)
        self.log("up.start", run_id=run_id, launcher=launcher, nodes=chosen)
        return self.state

    def _mark(self, state: RigState, phase: str, t0: float) -> None:
        state.timings[phase] = round(time.monotonic() - t0, 1)
        state.save(self.paths.state_file)

    def _start_vms(self, state: RigState) -> None:
        launcher = self.launcher
        launcher.start([self.topology.node(n) for n in state.nodes])
        if isinstance(launcher, QemuLauncher):
            for daemon in launcher.daemons.values():
                state.add_daemon(daemon)
        state.save(self.paths.state_file)

    def _finish(self, state: RigState, t0: float) -> None:
        """After the VMs boot: quorum, shelf logins, hacontrol install (also the tail of a manual vagrant up)."""
        wheel = nodes.build_wheel(self.paths, self.log)
        zookeeper.wait_quorum(self.topology, timeout=90, log=self.log)
        self._mark(state, "zookeeper_quorum", t0)
        self._setup_guests(state, wheel, boot_timeout=BOOT_TIMEOUT_S)
        self._mark(state, "guests_ready", t0)
        self._measure_speed(state)
        self._mark(state, "speed_measured", t0)
        state.phase = "up"
        state.up_seconds = round(time.monotonic() - t0, 1)  # image check/build included
        state.save(self.paths.state_file)
        self.log("up.done", up_seconds=state.up_seconds, timings=state.timings)

    def _setup_guests(self, state: RigState, wheel: Path | None, boot_timeout: float) -> None:
        def one(name: str) -> dict:
            guest = self.guest(name)
            booted = guest.wait(boot_timeout)
            self.log("guest.ssh", node=name, s=round(booted, 1))
            return nodes.setup_node(guest, self.topology.node(name), self.topology, wheel, self.paths)

        with ThreadPoolExecutor(max_workers=len(state.nodes)) as pool:
            results = {name: pool.submit(one, name) for name in state.nodes}
        for name, future in results.items():
            state.guests[name] = future.result()
        state.save(self.paths.state_file)

    def _measure_speed(self, state: RigState) -> None:
        """The speed factor (rigctl.speed), and the agents' systemd start/stop limits stretched by it."""
        controllers = [n for n in state.nodes if self.topology.node(n).role == "controller"]
        state.speed = speed.measure({n: self.guest(n) for n in controllers}, self.log)
        state.save(self.paths.state_file)
        dropin = (f"[Service]\nTimeoutStartSec={self.scaled(90):.0f}s\nTimeoutStopSec={self.scaled(30):.0f}s\n")
        for node in controllers:
            self.ssh(node, "install -d /etc/systemd/system/hacontrol.service.d && cat > "
                           "/etc/systemd/system/hacontrol.service.d/rig-speed.conf && systemctl daemon-reload",
                     input_text=dropin, timeout=self.scaled(60), check=True)

    def provision(self) -> dict:
        """Re-install the current checkout into both controllers (and redo the idempotent guest setup)."""
        state = self._require_state()
        with exclusive(self.paths.lock_file, "provision"):
            t0 = time.monotonic()
            wheel = nodes.build_wheel(self.paths, self.log)
            self._setup_guests(state, wheel, boot_timeout=60)
            if state.phase == "prepared":  # the tail of a by-hand `vagrant up`
                state.phase = "up"
                state.up_seconds = round(time.time() - state.started_at, 1)
            state.save(self.paths.state_file)
            self.log("provision.done", s=round(time.monotonic() - t0, 1))
            return {name: g.get("hacontrol") for name, g in state.guests.items()}

    def down(self) -> float:
        """Tear everything down (VMs, libvirt objects, box, daemons, namespace, run files); keep cache and logs."""
        with exclusive(self.paths.lock_file, "down"):
            t0 = time.monotonic()
            state = self.state
            if state is not None:
                self._collect_guest_logs(state)
                self._stop_launcher(state)
                host.stop_daemons(state.daemon_objects(), self.log)
            host.sweep_namespace(self.topology, self.log)
            speed.remove_limit(self.log)
            host.remove_run_files(self.paths, self.log)
            took = round(time.monotonic() - t0, 1)
            self.log("down.done", s=took)
            self.state = None
            self._launcher = None
            return took

    def _stop_launcher(self, state: RigState) -> None:
        launcher = self.launcher
        try:
            launcher.stop()
        finally:
            if isinstance(launcher, VagrantLauncher):
                _copy_tree(self.paths.libvirt / "log", Path(state.log_dir) / "libvirt")

    def collect_logs(self) -> Path:
        state = self._require_state()
        self._collect_guest_logs(state)
        return Path(state.log_dir)

    def _collect_guest_logs(self, state: RigState) -> None:
        """Each running guest's journal (kernel messages included) into the run's log folder; best effort."""
        if not netns.exists(self.namespace):
            return
        for name in state.nodes:
            if self.vm_state(name) != "running":
                continue
            out = self.ssh(name, "journalctl -b --no-pager -o short-precise; echo; iscsiadm -m session -P 1",
                           timeout=60, check=False)
            (Path(state.log_dir) / f"journal-{name}.txt").write_text(out.stdout + out.stderr)

    # --- status ---------------------------------------------------------------------------------------
    def status(self) -> dict:
        state = self.state
        if state is None:
            return {"up": False, "namespace": netns.exists(self.namespace)}
        vms = {name: self.vm_state(name) for name in state.nodes}
        return {
            "up": state.phase == "up", "phase": state.phase, "run_id": state.run_id, "launcher": state.launcher,
            "log_dir": state.log_dir, "up_seconds": state.up_seconds, "timings": state.timings, "vms": vms,
            "speed": {**state.speed, "factor": self.speed_factor}, "cpu_limit": speed.cpu_limit(),
            "vm_cpu_limit": speed.vm_cpu_limit(),
            "daemons": {name: d.alive() for name, d in state.daemon_objects().items()},
            "zookeeper": zookeeper.member_states(self.topology) if netns.exists(self.namespace) else {},
            "faults": [f.describe() for f in state.fault_objects()],
            "zk_connect": self.zk_connect, "namespace": self.namespace, "addresses": self.addresses,
            "jbod_wwns": self.jbod_wwns, "jbod_paths": {n: self.jbod_paths(n) for n in self.jbod},
        }

    def smoke(self) -> dict:
        self._require_state()
        result = run_smoke(self)
        self.log("smoke.done", ok=result["ok"], checks=result["checks"])
        return result

    # --- launcher -------------------------------------------------------------------------------------
    @property
    def launcher(self) -> QemuLauncher | VagrantLauncher:
        if self._launcher is None:
            state = self._require_state()
            img = image.GuestImage(Path(state.image_dir))
            cls = QemuLauncher if state.launcher == "qemu" else VagrantLauncher
            self._launcher = cls(self.topology, self.paths, img, Path(state.log_dir), self.log)
            self._launcher.adopt(state.daemon_objects())
        return self._launcher

    def vm_state(self, node: str) -> str:
        """'running' | 'paused' | 'off' | ... as libvirt (vagrant path) or QMP (qemu path) reports it."""
        return self.launcher.state(self.topology.node(node))

    def _require_state(self) -> RigState:
        if self.state is None:
            raise RigError("no rig is up (`vagrant/rig up`)")
        return self.state

    # --- faults (see faults.py for the network ones) --------------------------------------------------
    def partition(self, node: str, target: str) -> None:
        """Cut `node` off from zk (all members), its peer (every network), or the initiators (SAN side)."""
        if target not in faults.PARTITION_TARGETS:
            raise RigError(f"partition target must be one of {', '.join(faults.PARTITION_TARGETS)}")
        if target != "zk" and self.topology.node(node).role != "controller":
            raise RigError(f"partition from {target} applies to the controllers, not {node}")
        self._add_fault(faults.Fault("partition", node, target))

    def fail_disk_path(self, node: str) -> None:
        """Cut a controller's path to the shelf (its iSCSI session to tgt times out, I/O errors after ~10 s)."""
        if self.topology.node(node).role != "controller":
            raise RigError(f"{node} has no path to the shelf")
        self._add_fault(faults.Fault("disk-path", node))

    def heal(self) -> None:
        """Remove every network fault (partitions and failed disk paths)."""
        state = self._require_state()
        state.faults = []
        state.save(self.paths.state_file)
        faults.clear(self.topology, self.log)

    def _add_fault(self, fault: faults.Fault) -> None:
        state = self._require_state()
        self.topology.node(fault.node)
        active = state.fault_objects()
        if fault not in active:
            active.append(fault)
        faults.apply(active, self.topology, self.launcher.taps, self.log)
        state.faults = [f.to_json() for f in active]
        state.save(self.paths.state_file)

    def pause_vm(self, node: str) -> None:
        self.launcher.pause(self.topology.node(node))
        self.log("fault.pause_vm", node=node)

    def resume_vm(self, node: str) -> None:
        self.launcher.resume(self.topology.node(node))
        self.log("fault.resume_vm", node=node)

    def freeze_vm(self, node: str, seconds: float) -> dict:
        """Pause the whole VM (vCPUs and devices) for `seconds`, then resume it."""
        if not 0 < seconds <= 3600:
            raise RigError("freeze-vm takes 0 < SECONDS <= 3600")
        t0 = time.monotonic()
        self.pause_vm(node)
        try:
            time.sleep(seconds)
        finally:
            self.resume_vm(node)
        return {"node": node, "frozen_s": round(time.monotonic() - t0, 2), "state": self.vm_state(node)}

    def power_off(self, node: str) -> str:
        """Hard power-off (no guest shutdown); returns the VM state afterwards ('off')."""
        self.launcher.power_off(self.topology.node(node))
        self.log("fault.power_off", node=node)
        return self.vm_state(node)

    def power_on(self, node: str, wait: bool = True) -> str:
        """Boot a powered-off VM again; with wait, until ssh answers and its guest setup is redone."""
        state = self._require_state()
        launcher = self.launcher
        launcher.power_on(self.topology.node(node))
        if isinstance(launcher, QemuLauncher):
            state.add_daemon(launcher.daemons[node])
            state.save(self.paths.state_file)
        if state.faults:  # libvirt may give the restarted VM new tap names: render the filters again
            faults.apply(state.fault_objects(), self.topology, self.launcher.taps, self.log)
        if wait:
            guest = self.guest(node)
            guest.wait(self.scaled(BOOT_TIMEOUT_S))
            state.guests[node] = nodes.setup_node(guest, self.topology.node(node), self.topology, None, self.paths)
            state.save(self.paths.state_file)
        self.log("fault.power_on", node=node)
        return self.vm_state(node)

    def kill_agent(self, node: str) -> str:
        """SIGKILL the processes of hacontrol.service in the guest (systemd may restart it, as configured)."""
        self._require_agent(node)
        self.ssh(node, "systemctl kill --signal=SIGKILL hacontrol.service", timeout=self.scaled(30), check=True)
        self.log("fault.kill_agent", node=node)
        return f"killed hacontrol.service on {node}"

    def freeze_agent(self, node: str, seconds: float) -> dict:
        """SIGSTOP hacontrol.service for `seconds`, then SIGCONT.

        Stop, sleep and resume run in one shell inside the guest: a second ssh connection for the SIGCONT took
        longer than the watchdog's margin under TCG when the connection master had gone (campaign seed 1, trial
        131: a 1.2 s freeze became a watchdog reset). The shell ignores SIGHUP, so a dropped ssh session cannot
        leave the agent stopped."""
        if not 0 < seconds <= 3600:
            raise RigError("freeze-agent takes 0 < SECONDS <= 3600")
        self._require_agent(node)
        unit = "hacontrol.service"
        script = (f"trap '' HUP; systemctl kill --signal=SIGSTOP {unit} && sleep {seconds:g}; "
                  f"systemctl kill --signal=SIGCONT {unit}")
        t0 = time.monotonic()
        self.ssh(node, f"sh -c {shlex.quote(script)}", timeout=seconds + 60, check=True)
        self.log("fault.freeze_agent", node=node, seconds=seconds)
        return {"node": node, "frozen_s": round(time.monotonic() - t0, 2)}

    def _require_agent(self, node: str) -> None:
        active = self.ssh(node, "systemctl is-active hacontrol.service", timeout=self.scaled(30)).stdout.strip()
        if active != "active":
            raise RigError(f"hacontrol.service is not running on {node} (systemctl is-active: {active or '?'}); "
                           "nothing to kill or freeze")

    # --- ZooKeeper member faults (leader loss, quorum loss) ----------------------------------------------
    def zk_modes(self) -> dict[str, str]:
        """member address -> leader / follower / down."""
        return zookeeper.member_states(self.topology)

    def zk_stop(self, member: int) -> None:
        """Kill ZooKeeper member number ``member`` (1-based) by its PID."""
        state = self._require_state()
        daemon = state.daemon_objects().get(f"zk{member}")
        if daemon is not None:
            stop(daemon, timeout=10, log=self.log)

    def zk_start(self, member: int) -> None:
        state = self._require_state()
        daemon = state.daemon_objects().get(f"zk{member}")
        if daemon is not None and daemon.alive():
            return
        started = zookeeper.start_member(self.topology, self.paths.zookeeper, Path(state.log_dir), member, self.log)
        state.add_daemon(started)
        state.save(self.paths.state_file)

    def ensure_running(self, node: str, timeout: float | None = None) -> str:
        """Bring a VM back to where ssh answers: resume it if paused, power it on if off, wait if it reboots.

        Under TCG a controller's hardware watchdog can reset it while a peer VM boots beside it, and its peer then
        power-fences the rebooting VM: a single look at the VM state ("running") is not enough, so this looks
        again until ssh answers. Returns what it did: "reachable", "resumed", "powered on" or "waited".
        The default limit is BOOT_TIMEOUT_S, scaled by the speed factor.
        """
        timeout = self.scaled(BOOT_TIMEOUT_S) if timeout is None else timeout
        deadline = time.monotonic() + timeout
        did = "reachable"
        while True:
            state = self.vm_state(node)
            if state == "paused":
                self.resume_vm(node)
                did = "resumed"
            elif state == "off":
                self.power_on(node)
                return "powered on"
            if self.guest(node).reachable(timeout=10):
                return did
            if time.monotonic() > deadline:
                raise RigError(f"{node} did not answer ssh within {timeout:.0f} s (VM state: {state})")
            did = "waited"
            time.sleep(2.0)

    def wait_ssh(self, node: str, timeout: float = 60) -> float:
        return wait_until(f"ssh to {node}", lambda: self.guest(node).reachable(), timeout=self.scaled(timeout),
                          interval=1.0)


def _copy_tree(source: Path, destination: Path) -> None:
    if source.exists():
        shutil.copytree(source, destination, dirs_exist_ok=True)
