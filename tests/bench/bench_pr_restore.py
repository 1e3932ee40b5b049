"""Can a controller re-create on its own LIO the persistent reservations initiators made through its peer?
Measured in the VM rig with real LIO (issue #18: choose the mechanism by measurement). Prints JSON; asserts
nothing.

    vagrant/rig up && .venv/bin/python tests/bench/bench_pr_restore.py [--json FILE]

Steps (both controllers configured from tests/rig/test_lio_kit.CONFIG, agents stopped, ctrl-a Active/Optimized):

1. Two initiators with fixed ISIDs register through ctrl-a's port (RTPI 1) on LUN 1, the first reserves it
   (Write Exclusive, Registrants Only); the second also registers through ctrl-b's own (Standby) port. READ FULL
   STATUS through each controller gives its registrations with their target port and ISID (what an agent can
   read from its own LIO with one command): each controller knows only what came through its own ports.
2. On ctrl-b, the state is written into LIO as APTPL metadata (``pr/res_aptpl_metadata``): first while the
   LUN is exported (the kernel refuses that), then after removing the LUN's exports (what ctrl-b's LIO still
   holds then is recorded), and hacontrol's configure re-creates the exports. How long each part takes.
3. READ FULL STATUS through ctrl-b afterwards; then ctrl-b is made Active/Optimized and a non-registrant
   (ESX) and the holder's initiator on a nexus it did not register (ctrl-b's own port) write: both must get
   RESERVATION CONFLICT if the reservation came back. What a command on ctrl-b's path sees while the LUN is
   unexported is sampled by a TEST UNIT READY loop in a thread.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "vagrant"))
sys.path.insert(0, str(ROOT))

from rigctl import Rig  # noqa: E402

from hacontrol.adapters.fencing import pr_codec as pr  # noqa: E402
from hacontrol.adapters.lio.reservations import aptpl_block, metadata_lines, port_of_rtpi  # noqa: E402
from hacontrol.config import loads  # noqa: E402
from hacontrol.probe.session import Session  # noqa: E402
from tests.rig.test_lio_kit import (  # noqa: E402
    ESX,
    ESX_CHAP,
    PORTAL,
    PROBE,
    PROBE2,
    PY,
    TARGET_CHAP,
    Initiator,
    lio_environment,
    ready_session,
)

LUN = 1
SO = "hac-ds1"
KEY1, KEY2, KEY3 = 0x6775657374000001, 0x6775657374000002, 0x6775657374000003
ISID1, ISID2, ISID_ESX, ISID_TUR = 0x023D00000001, 0x023D00000002, 0x023D00000003, 0x023D00000009

# Runs on a controller: the metadata written while exported, then unexport and write (one line per
# registration), with timings. rtslib-fb is in the agent's venv.
UNEXPORT_AND_LOAD = r"""
import json, sys, time
from rtslib_fb import RTSRoot
so_name, lines = sys.argv[1], json.loads(sys.argv[2])
so = next(s for s in RTSRoot().storage_objects if s.name == so_name)
meta = f"{so.path}/pr/res_aptpl_metadata"
out = {}
def write(line):
    with open(meta, "w") as f:
        f.write(line)
try:
    write(lines[0])
    out["while_exported"] = "accepted"
except OSError as e:
    out["while_exported"] = f"refused: {e.strerror} (errno {e.errno})"
t0 = time.monotonic()
luns = list(so.attached_luns)
out["exports"] = [[l.parent_tpg.tag, l.lun] for l in luns]
for l in luns:
    l.delete()
t1 = time.monotonic()
def registered():
    with open(f"{so.path}/pr/res_pr_registered_i_pts") as f:
        return f.read().strip().splitlines()[1:]
out["registered_after_unexport"] = registered()
errors = []
for line in lines:
    try:
        write(line)
    except OSError as e:
        errors.append(f"{e.strerror} (errno {e.errno})")
t2 = time.monotonic()
out.update(unexport_s=round(t1 - t0, 4), metadata_s=round(t2 - t1, 4), metadata_errors=errors,
           registered_after_load=registered())
print(json.dumps(out))
"""


def session(portal: str, initiator: str, isid: int, creds: Any = TARGET_CHAP) -> Session:
    return ready_session(portal, LUN, initiator, isid, creds)


def out_cmd(s: Session, c: pr.PrOutCommand) -> str:
    return f"{c.name}: {s.execute(c.cdb, data_out=c.data).describe()}"


def full_status(portal: str) -> dict[str, Any]:
    with session(portal, PROBE2, ISID2) as s:
        t = time.monotonic()
        r = s.execute(pr.cdb_pr_in(pr.PrIn.READ_FULL_STATUS, 8192), data_in_len=8192)
        took = time.monotonic() - t
        if not r.ok:
            return {"error": r.describe()}
        generation, regs = pr.parse_read_full_status(r.data)
        return {"generation": generation, "round_trip_s": round(took, 4),
                "registrations": sorted([{"key": hex(x.key), "holder": x.holder, "type": x.pr_type,
                                          "all_tg_pt": x.all_target_ports, "rtpi": x.rtpi,
                                          "initiator": x.initiator, "isid": x.isid} for x in regs],
                                        key=lambda d: (d["initiator"], d["isid"], d["rtpi"]))}


def register_on_the_standby_path(portal: str) -> str:
    """The second initiator also registers through ctrl-b's own (Standby) port: LIO allows PR-OUT there, and
    the registration lives in ctrl-b's LIO only."""
    with session(portal, PROBE2, ISID2) as s:
        return out_cmd(s, pr.register_and_ignore(KEY3))


def register_and_reserve(portal: str) -> list[str]:
    with session(portal, PROBE, ISID1) as s1, session(portal, PROBE2, ISID2) as s2:
        return [out_cmd(s1, pr.register_and_ignore(KEY1)), out_cmd(s2, pr.register_and_ignore(KEY2)),
                out_cmd(s1, pr.reserve(KEY1, pr.PrType.WRITE_EXCLUSIVE_REGISTRANTS_ONLY))]


def writes(portal: str) -> dict[str, str]:
    out = {}
    for name, initiator, isid, creds in (("esx (not registered)", ESX, ISID_ESX, ESX_CHAP),
                                         ("probe on ctrl-b's own port (not its registered nexus)", PROBE, ISID1,
                                          TARGET_CHAP)):
        with session(portal, initiator, isid, creds) as s:
            out[name] = s.write16(4096, b"\0" * 512, 512).describe()
    return out


def lines_from_full_status(status: dict[str, Any], cfg: Any) -> list[str]:
    """One APTPL metadata line per registration READ FULL STATUS reported (adapters/lio/reservations.py)."""
    blocks = []
    for r in status["registrations"]:
        port = port_of_rtpi(cfg, r["rtpi"])
        assert port is not None, f"no TPG has relative port id {r['rtpi']}"
        blocks.append(aptpl_block(initiator=r["initiator"], isid=r["isid"], key=int(r["key"], 16), holder=r["holder"],
                                 pr_type=r["type"], all_target_ports=r["all_tg_pt"], target_iqn=port[0],
                                 tpg_tag=port[1], rtpi=r["rtpi"], lun=LUN))
    return metadata_lines(tuple(blocks))


def _tur(s: Session) -> str:
    """One TEST UNIT READY's outcome; a session that was lost is logged in again for the next one."""
    try:
        return s.test_unit_ready(timeout_s=2).describe()
    except Exception as exc:  # a measurement: record, never raise
        if not s.connected:
            with contextlib.suppress(Exception):
                s.connect(f"{PORTAL['ctrl-b']}:3260", 5)
        return type(exc).__name__


class TurSampler:
    """TEST UNIT READY on ctrl-b's own path every 20 ms while the LUN is re-created: what a path check sees.
    Its own thread in the namespace and its own ISID (a second login on the same nexus would end the first)."""

    def __init__(self, initiator: Initiator) -> None:
        self.initiator, self.stop = initiator, threading.Event()
        self.seen: dict[str, int] = {}

    def run(self) -> None:
        def loop() -> None:
            end = time.monotonic() + 120
            try:
                s = session(PORTAL["ctrl-b"], PROBE2, ISID_TUR)
            except Exception as exc:  # a measurement: record, never raise
                self.seen[f"login: {exc}"] = 1
                return
            with s:
                while not self.stop.is_set() and time.monotonic() < end:
                    label = _tur(s)
                    self.seen[label] = self.seen.get(label, 0) + 1
                    time.sleep(0.02)
        self.thread = threading.Thread(target=lambda: self.initiator(loop, timeout=180), daemon=True)
        self.thread.start()

    def finish(self) -> dict[str, int]:
        self.stop.set()
        self.thread.join(timeout=30)
        return self.seen


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args()
    rig = Rig()
    if rig.state is None:
        print("the rig is not up: vagrant/rig up", file=sys.stderr)
        return 2
    initiator = Initiator(rig.namespace)
    out: dict[str, Any] = {}
    env_gen = lio_environment(rig)
    env = next(env_gen)
    try:
        out["register"] = initiator(register_and_reserve, PORTAL["ctrl-a"])
        out["via_ctrl_a"] = initiator(full_status, PORTAL["ctrl-a"])
        out["register_via_ctrl_b"] = initiator(register_on_the_standby_path, PORTAL["ctrl-b"])
        out["via_ctrl_b_before"] = initiator(full_status, PORTAL["ctrl-b"])
        # ctrl-a's registrations and ctrl-b's own: unexporting drops what ctrl-b had (measured below)
        merged = {"registrations": out["via_ctrl_a"]["registrations"] + out["via_ctrl_b_before"]["registrations"]}
        lines = lines_from_full_status(merged, loads(env.config()))
        out["metadata_lines"] = lines
        sampler = TurSampler(Initiator(rig.namespace))
        sampler.run()
        time.sleep(1.0)
        t = time.monotonic()
        r = rig.ssh("ctrl-b", f"{PY} - {SO} '{json.dumps(lines)}'", input_text=UNEXPORT_AND_LOAD, timeout=120)
        ok = r.returncode == 0
        out["load"] = json.loads(r.stdout.strip().splitlines()[-1]) if ok else {"error": r.stderr[-2000:]}
        configured = env.run("ctrl-b", "observe")
        env.run("ctrl-b", "alua", "STANDBY", "ACTIVE_OPTIMIZED")
        out["restore_total_s"] = round(time.monotonic() - t, 3)
        time.sleep(0.5)
        out["tur_on_ctrl_b_during_restore"] = sampler.finish()
        out["reexport_configure_s"] = configured.get("configure_s")
        out["via_ctrl_b_after"] = initiator(full_status, PORTAL["ctrl-b"])
        env.run("ctrl-a", "alua", "STANDBY", "ACTIVE_OPTIMIZED")
        env.run("ctrl-b", "alua", "ACTIVE_OPTIMIZED", "STANDBY")
        out["writes_via_ctrl_b_active"] = initiator(writes, PORTAL["ctrl-b"])
    finally:
        env_gen.close()
    print(json.dumps(out, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
