"""``python -m hacontrol.adapters.fencing.prtool``: the scsi_pr adapter by hand, for the rig and for operators.

    prtool --node-id 1 --peer-id 2 show --epoch 7 DEVICE...
    prtool --node-id 1 --peer-id 2 register --epoch 7 DEVICE...
    prtool --node-id 1 --peer-id 2 take-over --epoch 8 DEVICE...
    prtool write-check DEVICE...
    prtool --node-id 1 clear --epoch 9 DEVICE...

DEVICE is a device node (SG_IO: /dev/sdX, /dev/disk/by-id/...) or iscsi://HOST[:PORT]/IQN/LUN (libiscsi).
Every command prints one JSON document: per disk the registered keys, the holder and the type, plus the
``Storage`` the agent would observe (``show``, also after the others). ``clear`` registers, then CLEARs every
registration and the reservation: the way out when ZooKeeper's epoch counter was reset below the epochs on
the disks (the adapter refuses to act under an older epoch); run it only with both agents stopped.
``write-check`` sends a WRITE(16) of zero blocks (no data is written; reservation checks still apply) and
prints the SCSI status per disk: RESERVATION CONFLICT proves this controller is fenced off that disk.
Exit status: 0 done, 1 refused/failed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from hacontrol.adapters.fencing import pr_codec as pr
from hacontrol.adapters.fencing.pr_transport import TransportError, open_transport
from hacontrol.adapters.fencing.scsi_pr import RESERVATION_TYPES, DiskOutcome, ScsiReservations
from hacontrol.agent.protocols import AdapterError
from hacontrol.logs import configure

WRITE16_ZERO_BLOCKS = bytes([0x8A]) + bytes(15)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="prtool", description=__doc__.split("\n\n")[0])
    p.add_argument("--node-id", type=int, default=1, help="this controller's node id (1-65535)")
    p.add_argument("--peer-id", type=int, default=2, help="the peer's node id")
    p.add_argument("--type", choices=sorted(RESERVATION_TYPES), default="write_exclusive_registrants_only")
    p.add_argument("--timeout", type=float, default=5.0, help="budget for the whole operation, seconds")
    p.add_argument("--no-require-all", action="store_true", help="skip disks that do not answer")
    p.add_argument("--initiator-name", help="iSCSI initiator name for iscsi:// devices")
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("show", "register", "take-over", "clear"):
        s = sub.add_parser(name)
        s.add_argument("--epoch", type=int, required=True)
        s.add_argument("devices", nargs="+")
    w = sub.add_parser("write-check")
    w.add_argument("devices", nargs="+")
    return p


def _view(outcome: DiskOutcome) -> dict[str, Any]:
    if outcome.view is None:
        return {"device": outcome.device, "error": outcome.error, "reachable": outcome.reachable}
    v = outcome.view
    return {"device": v.device, "keys": [pr.describe_key(k) for k in v.keys], "generation": v.generation,
            "holder": None if v.holder_key is None else pr.describe_key(v.holder_key), "type": v.pr_type,
            "detail": outcome.detail}


def _write_check(args: argparse.Namespace) -> tuple[int, dict[str, Any]]:
    result: dict[str, Any] = {}
    for device in args.devices:
        transport = open_transport(device, args.initiator_name or f"iqn.2024-01.org.hacontrol:node-{args.node_id}")
        try:
            for _ in range(3):  # a new session's first command meets a UNIT ATTENTION: report what follows
                reply = transport.command(WRITE16_ZERO_BLOCKS, data_out=None, timeout_s=args.timeout)
                if reply.sense is None or reply.sense.key != 0x6:
                    break
            result[device] = reply.describe()
        except TransportError as exc:
            result[device] = f"no answer: {exc}"
        finally:
            transport.close()
    return 0, {"write_check": result}


def _clear(reservations: ScsiReservations, epoch: int, deadline: float) -> dict[str, str]:
    key = pr.pr_key(reservations.node_id, epoch)
    result = {}
    for disk in reservations.disks:
        answers = []
        for command in (pr.register_and_ignore(key), pr.clear(key)):
            for _ in range(3):  # past a UNIT ATTENTION
                reply = disk.transport.command(command.cdb, data_out=command.data,
                                               timeout_s=max(0.1, deadline - time.monotonic()))
                if reply.sense is None or reply.sense.key != 0x6:
                    break
            answers.append(f"{command.name}: {reply.describe()}")
        result[disk.name] = "; ".join(answers)
        if not reply.ok:
            raise AdapterError(f"{disk.name}: {answers[-1]}")
    return result


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    configure(stream=sys.stderr)  # stdout carries the JSON document only
    if args.command == "write-check":
        code, doc = _write_check(args)
        print(json.dumps(doc, indent=2))
        return code
    reservations = ScsiReservations(args.devices, node_id=args.node_id, peer_id=args.peer_id,
                                    timeout_s=args.timeout, reservation_type=args.type,
                                    require_all=not args.no_require_all, observe_timeout_s=args.timeout,
                                    initiator_name=args.initiator_name)
    doc: dict[str, Any] = {"command": args.command, "epoch": args.epoch}
    code = 0
    try:
        deadline = time.monotonic() + args.timeout
        if args.command == "take-over":
            doc["result"] = reservations.take_over(args.epoch, deadline)
        elif args.command == "register":
            reservations.register(args.epoch, deadline)
        elif args.command == "clear":
            doc["result"] = _clear(reservations, args.epoch, deadline)
    except AdapterError as exc:
        doc["error"], code = str(exc), 1
    storage = reservations.observe(args.epoch)
    doc["storage"] = {k: v for k, v in asdict(storage).items() if k != "last_fence"}
    doc["disks"] = [_view(o) for o in reservations.last_outcomes]
    reservations.close()
    print(json.dumps(doc, indent=2))
    return code


if __name__ == "__main__":
    sys.exit(main())
