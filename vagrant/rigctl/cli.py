"""vagrant/rig: command line for the rig. Every command maps to one Rig method (see driver.py)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

from . import agents
from .driver import DEFAULT_LAUNCHER, LAUNCHERS, Rig
from .faults import PARTITION_TARGETS
from .image import ensure_image
from .proc import RigError


def _print(data: object, as_json: bool) -> None:
    if as_json:
        print(json.dumps(data, indent=2, default=str))
    elif isinstance(data, dict):
        for key, value in data.items():
            print(f"{key}: {json.dumps(value, default=str) if isinstance(value, dict | list) else value}")
    else:
        print(data)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vagrant/rig", description="hacontrol's two-controller LIO rig")
    sub = p.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="build/reuse the image, start the host side and the VMs")
    up.add_argument("--launcher", choices=LAUNCHERS, default=os.environ.get("HACRIG_LAUNCHER", DEFAULT_LAUNCHER))
    up.add_argument("--no-initiator-vm", action="store_true", help="only ctrl-a and ctrl-b (no 'init' VM)")
    up.add_argument("--rebuild-image", action="store_true")
    up.add_argument("--json", action="store_true")

    prep = sub.add_parser("prepare", help="host side + box + .rig/vagrant.json, for running `vagrant up` by hand")
    prep.add_argument("--no-initiator-vm", action="store_true")
    prep.add_argument("--json", action="store_true")

    sub.add_parser("down", help="remove VMs, libvirt objects, box, daemons, namespace (keeps cache and logs)")
    for name, text in (("status", "what runs, and the rig's addresses"), ("smoke", "check the rig end to end")):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("--json", action="store_true")
    sub.add_parser("provision", help="re-install the current checkout into both controllers")
    img = sub.add_parser("image", help="build (or find) the cached guest image")
    img.add_argument("--rebuild", action="store_true")
    sub.add_parser("collect-logs", help="copy each guest's journal into the run's log folder")

    ssh = sub.add_parser("ssh", help="ssh NODE [COMMAND...]")
    ssh.add_argument("node")
    ssh.add_argument("remote", nargs=argparse.REMAINDER)
    vg = sub.add_parser("vagrant", help="run vagrant inside the rig namespace with the rig's environment")
    vg.add_argument("args", nargs=argparse.REMAINDER)

    for name in ("kill-agent", "power-off", "power-on", "fail-disk-path", "pause-vm", "resume-vm"):
        sub.add_parser(name).add_argument("node")
    for name in ("freeze-agent", "freeze-vm"):
        cmd = sub.add_parser(name)
        cmd.add_argument("node")
        cmd.add_argument("seconds", type=float)
    part = sub.add_parser("partition", help="partition NODE from zk|peer|initiators")
    part.add_argument("node")
    part.add_argument("word", choices=["from"])
    part.add_argument("target", choices=PARTITION_TARGETS)
    sub.add_parser("heal", help="remove every partition and failed disk path")
    ag = sub.add_parser("agents", help="hacontrol on the rig: config | deploy | start | stop | status | hactl ARGS")
    ag.add_argument("action", choices=["config", "deploy", "start", "stop", "status", "hactl"])
    ag.add_argument("args", nargs=argparse.REMAINDER, help="hactl's arguments (with `hactl`)")
    ag.add_argument("--no-port-takeover", action="store_true")
    ag.add_argument("--no-power-fencing", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if os.geteuid() != 0:
        if shutil.which("sudo"):  # a user with sudo: run again as root, environment kept (as the .ci scripts do)
            os.execvp("sudo", ["sudo", "-E", sys.executable, sys.argv[0], *sys.argv[1:]])
        print("vagrant/rig needs root (namespaces, bridges, tgtd, libvirtd) and sudo is not installed: "
              "run it as root", file=sys.stderr)
        return 2
    try:
        return _dispatch(args)
    except RigError as exc:
        print(f"rig: {exc}", file=sys.stderr)
        if args.command in ("up", "prepare"):
            print("rig: `vagrant/rig down` removes whatever was started; logs stay in .rig/logs/", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("rig: interrupted; `vagrant/rig down` cleans up", file=sys.stderr)
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    rig = Rig()
    cmd = args.command
    if cmd == "up":
        _print(rig.up(args.launcher, initiator_vm=not args.no_initiator_vm, rebuild_image=args.rebuild_image),
               args.json)
    elif cmd == "prepare":
        _print(rig.prepare(initiator_vm=not args.no_initiator_vm), args.json)
    elif cmd == "down":
        print(f"down in {rig.down()} s")
    elif cmd == "status":
        _print(rig.status(), args.json)
    elif cmd == "smoke":
        result = rig.smoke()
        _print(result if args.json else {**result["checks"], "ok": result["ok"], "up_seconds": result["up_seconds"]},
               args.json)
        return 0 if result["ok"] else 1
    elif cmd == "provision":
        _print(rig.provision(), False)
    elif cmd == "image":
        print(ensure_image(rig.paths, rig.log, rebuild=args.rebuild).directory)
    elif cmd == "collect-logs":
        print(rig.collect_logs())
    elif cmd == "ssh":
        argv = rig.ssh_argv(args.node, " ".join(args.remote) if args.remote else None)
        os.execvp(argv[0], argv)
    elif cmd == "vagrant":
        return _vagrant(rig, args.args)
    elif cmd == "agents":
        return _agents(rig, args)
    else:
        _print(_fault(rig, args), False)
    return 0


def _fault(rig: Rig, args: argparse.Namespace) -> object:
    cmd = args.command
    if cmd == "partition":
        rig.partition(args.node, args.target)
        return f"partitioned {args.node} from {args.target}"
    if cmd == "heal":
        rig.heal()
        return "healed"
    if cmd == "fail-disk-path":
        rig.fail_disk_path(args.node)
        return f"{args.node}: shelf path down (heal restores it)"
    if cmd == "freeze-vm":
        return rig.freeze_vm(args.node, args.seconds)
    if cmd == "freeze-agent":
        return rig.freeze_agent(args.node, args.seconds)
    if cmd == "kill-agent":
        return rig.kill_agent(args.node)
    if cmd == "power-off":
        return f"{args.node}: {rig.power_off(args.node)}"
    if cmd == "power-on":
        return f"{args.node}: {rig.power_on(args.node)}"
    if cmd == "pause-vm":
        rig.pause_vm(args.node)
        return f"{args.node}: {rig.vm_state(args.node)}"
    if cmd == "resume-vm":
        rig.resume_vm(args.node)
        return f"{args.node}: {rig.vm_state(args.node)}"
    raise RigError(f"unknown command {cmd}")


def _agents(rig: Rig, args: argparse.Namespace) -> int:
    if args.action in ("config", "deploy"):
        text = agents.config_text(rig, port_takeover=not args.no_port_takeover,
                                  power_fencing=not args.no_power_fencing)
        if args.action == "config":
            print(text, end="")
        else:
            agents.deploy(rig, text)
            print(f"deployed to {', '.join(rig.controllers)} (copy in {rig.paths.run / 'hacontrol.toml'})")
    elif args.action == "start":
        agents.start(rig)
    elif args.action == "stop":
        agents.stop(rig)
    elif args.action == "status":
        print(agents.hactl(rig, "status").stdout, end="")
    else:
        out = agents.hactl(rig, *args.args)
        print(out.stdout, end="")
        print(out.stderr, end="", file=sys.stderr)
        return out.returncode
    return 0


def _vagrant(rig: Rig, vagrant_args: list[str]) -> int:
    state = rig.state
    if state is None or state.launcher != "vagrant":
        raise RigError("no vagrant rig is prepared: `vagrant/rig prepare` first")
    launcher = rig.launcher
    env = launcher.env()  # type: ignore[union-attr]
    argv = ["ip", "netns", "exec", rig.namespace, "vagrant", *vagrant_args]
    os.chdir(Path(env["VAGRANT_CWD"]))
    os.execvpe(argv[0], argv, env)
    return 0
