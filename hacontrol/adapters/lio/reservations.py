"""What LIO holds of the initiators' own SCSI-3 persistent reservations on each LUN (reads only).

Guest clusters (WSFC on RDMs, pacemaker with fence_scsi in VMs) register keys and reserve the LUNs this array
exports. LIO keeps that state in the controller's memory, per storage object, and shows it read-only under
``core/<hba>/<so>/pr/``:

* ``res_pr_registered_i_pts``: one line per registration, ``iSCSI Node: <iqn>[,i,0x<isid>] Key: 0x<key>
  PRgen: 0x<gen>`` (``None`` when there is none). The line does not name the target port the registration
  was made through, nor whether it was made for all target ports.
* ``res_pr_type``: ``SPC-3 Reservation Type: <name>`` or ``No SPC-3 Reservation holder``.
* ``res_holder``: ``SPC-3 Reservation: iSCSI Initiator: <iqn>[,i,0x<isid>]`` (or no holder).
* ``res_pr_holder_tg_port``: the holder's target port: ``Relative Port Identifier Tag: <rtpi> iSCSI Portal
  Group Tag: <tag> iSCSI Logical Unit: <lun>``.
* ``res_pr_all_tgt_pts``: whether the holder registered for all target ports.
* ``res_pr_generation``: the device's PRgeneration, ``0x%08x``.

The parsing is pure (unit-tested against the kernel's formats); :func:`read_reservations` reads the files of
the storage objects hacontrol owns (their directories come from ``LioPort.so_paths``): what ``hactl status``
shows per LUN. The second half reads and writes LIO's APTPL file format, which is how the state reaches the
next active (``prsync.py``); ``aptpl_block`` and ``port_of_rtpi`` build a registration from READ FULL STATUS
instead (tests/bench/bench_pr_restore.py, the measurement that chose the mechanism).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from hacontrol.config.schema import Config

from . import names
from .snapshot import read_text

# core_scsi3_pr_dump_type() in the kernel's target_core_pr.c, and the SPC-4 type codes
PR_TYPES = {
    "Write Exclusive Access": 1,
    "Exclusive Access": 3,
    "Write Exclusive Access, Registrants Only": 5,
    "Exclusive Access, Registrants Only": 6,
    "Write Exclusive Access, All Registrants": 7,
    "Exclusive Access, All Registrants": 8,
}
SHORT_TYPES = {1: "WE", 3: "EA", 5: "WERO", 6: "EARO", 7: "WEAR", 8: "EAAR"}
NO_HOLDER = "No SPC-3 Reservation holder"

_REGISTRATION = re.compile(r"^\S+ Node: (?P<node>[^\s,]+)(?:,i,0x(?P<isid>[0-9a-fA-F]+))? "
                           r"Key: 0x(?P<key>[0-9a-fA-F]+) PRgen: 0x(?P<gen>[0-9a-fA-F]+)$")
_HOLDER = re.compile(r"^SPC-3 Reservation: \S+ Initiator: (?P<node>[^\s,]+)(?:,i,0x(?P<isid>[0-9a-fA-F]+))?$")
_TG_PORT = re.compile(r"Relative Port Identifier Tag: (?P<rtpi>\d+) \S+ Portal Group Tag: (?P<tag>\d+)")


@dataclass(frozen=True)
class Registration:
    """One I_T nexus's key, as far as LIO shows it (the initiator port; the target port is not shown)."""

    initiator: str
    isid: str  # hex, "" when the initiator port has none
    key: int
    generation: int


@dataclass(frozen=True)
class Holder:
    initiator: str
    isid: str
    type: int  # SPC-4 code, 0 when LIO showed a name this module does not know
    type_name: str
    rtpi: int | None
    tpg_tag: int | None
    all_target_ports: bool


@dataclass(frozen=True)
class LunReservations:
    lun: str  # the configuration's LUN name
    generation: int | None
    registrations: tuple[Registration, ...]
    holder: Holder | None

    def as_dict(self) -> dict[str, object]:
        """For the member report and ``hactl status``: counts, the holder and the type; keys in hex."""
        holder = None
        if self.holder is not None:
            h = self.holder
            holder = {"initiator": h.initiator, "isid": h.isid, "type": SHORT_TYPES.get(h.type, h.type_name),
                      "rtpi": h.rtpi, "all_target_ports": h.all_target_ports}
        return {"lun": self.lun, "registrations": len(self.registrations), "generation": self.generation,
                "keys": sorted({f"{r.key:#x}" for r in self.registrations}), "holder": holder}


def parse_registrations(text: str) -> tuple[Registration, ...]:
    out = []
    for line in text.splitlines():
        m = _REGISTRATION.match(line.strip())
        if m:
            out.append(Registration(m["node"], (m["isid"] or "").lower(), int(m["key"], 16), int(m["gen"], 16)))
    return tuple(out)


def parse_holder(holder: str, pr_type: str, tg_port: str, all_tgt_pts: str) -> Holder | None:
    """The reservation holder from the four files that describe it; None without a holder (or when the
    files disagree because a PR-OUT ran between the reads: the next read sees a settled state)."""
    m = _HOLDER.match(holder.strip())
    type_name = pr_type.strip().removeprefix("SPC-3 Reservation Type:").strip()
    if m is None or pr_type.strip().startswith(NO_HOLDER) or not type_name:
        return None
    port = _TG_PORT.search(tg_port)
    return Holder(initiator=m["node"], isid=(m["isid"] or "").lower(), type=PR_TYPES.get(type_name, 0),
                  type_name=type_name, rtpi=int(port["rtpi"]) if port else None,
                  tpg_tag=int(port["tag"]) if port else None,
                  all_target_ports="All Target Ports" in all_tgt_pts)


def parse_generation(text: str) -> int | None:
    try:
        return int(text.strip(), 16)
    except ValueError:
        return None


def lun_reservations(lun: str, pr_dir: str) -> LunReservations | None:
    """One storage object's PR state from its ``pr`` directory (None if the directory is not there)."""
    if not os.path.isdir(pr_dir):
        return None
    files = {name: read_text(f"{pr_dir}/{name}") for name in (
        "res_pr_registered_i_pts", "res_holder", "res_pr_type", "res_pr_holder_tg_port", "res_pr_all_tgt_pts",
        "res_pr_generation")}
    return LunReservations(lun=lun, generation=parse_generation(files["res_pr_generation"]),
                           registrations=parse_registrations(files["res_pr_registered_i_pts"]),
                           holder=parse_holder(files["res_holder"], files["res_pr_type"],
                                               files["res_pr_holder_tg_port"], files["res_pr_all_tgt_pts"]))


def read_reservations(cfg: Config, dirs: Mapping[str, str | Path]) -> list[LunReservations]:
    """Every configured LUN's PR state on this controller, in configuration order. ``dirs``: the storage
    objects' configfs directories by name (``LioPort.so_paths``); LUNs without one yet are left out."""
    out = []
    for target in cfg.targets:
        for lun in target.luns:
            path = dirs.get(names.so_name(lun))
            state = lun_reservations(lun.name, f"{path}/pr") if path else None
            if state is not None:
                out.append(state)
    return out


# --- writing a registration back into LIO (APTPL metadata) --------------------------------------------------

def port_of_rtpi(cfg: Config, rtpi: int) -> tuple[str, int] | None:
    """The (target IQN, TPG tag) whose relative port id is ``rtpi`` (the same on both controllers, names.py)."""
    for index, target in enumerate(cfg.targets):
        for node in cfg.nodes:
            if names.rtpi(cfg, index, node) == rtpi:
                return target.iqn, names.tpg_tag(node)
    return None


def aptpl_block(*, initiator: str, isid: str, key: int, holder: bool, pr_type: int, all_target_ports: bool,
                target_iqn: str, tpg_tag: int, rtpi: int, lun: int) -> dict[str, str]:
    """One registration as the fields of the kernel's APTPL metadata (``pr/res_aptpl_metadata``, parsed by
    target_pr_res_aptpl_metadata_store; :func:`metadata_lines` joins them): LIO keeps it pending and attaches
    it to the I_T nexus when the LUN is exported to that initiator's ACL through that TPG. The mapped LUN is the
    LUN id (hacontrol maps each LUN under its own id). Refused by the kernel while the device is exported."""
    if not key:
        raise ValueError("a registration's key is never 0")
    block = {"initiator_fabric": "iSCSI", "initiator_node": initiator}
    if isid:
        block["initiator_sid"] = isid.lower()
    return block | {"sa_res_key": str(key), "res_holder": str(int(holder)), "res_type": str(pr_type if holder else 0),
                    "res_scope": "0", "res_all_tg_pt": str(int(all_target_ports)), "mapped_lun": str(lun),
                    "target_fabric": "iSCSI", "target_node": target_iqn, "tpgt": str(tpg_tag), "port_rtpi": str(rtpi),
                    "target_lun": str(lun)}


# --- the kernel's APTPL file: what LIO writes on every PR-OUT when force_pr_aptpl is set -------------------------
#
# With ``attrib/force_pr_aptpl = 1`` (set by hacontrol on every storage object, before it is exported) LIO
# writes the LUN's whole PR state to ``<dbroot>/pr/aptpl_<unit serial>`` on every PERSISTENT RESERVE OUT that
# changes it, before it completes the command. Each registration is a block of ``key=value`` lines between
# ``PR_REG_START: n`` and ``PR_REG_END: n``; the keys are those ``pr/res_aptpl_metadata`` accepts, so a block
# joined by commas is one metadata line (target_pr_res_aptpl_metadata_store).

APTPL_PREFIX = "aptpl_"
DEFAULT_DBROOT = "/var/target"
PREFERRED_DBROOT = "/etc/target"


def aptpl_dir(root: str | Path) -> Path:
    """Where LIO writes the APTPL files: ``<dbroot>/pr``, dbroot as configfs (``root``) names it; before the
    target module is loaded, where the kernel will put it (target_init_dbroot: /etc/target if that directory
    exists, else /var/target). rtslib-fb moves it (Debian: /etc/rtslib-fb-target) until a device exists."""
    dbroot = read_text(f"{root}/dbroot")
    if not dbroot:
        dbroot = PREFERRED_DBROOT if os.path.isdir(PREFERRED_DBROOT) else DEFAULT_DBROOT
    return Path(dbroot) / "pr"


NEXUS_FIELDS = ("initiator_node", "initiator_sid", "target_node", "tpgt", "port_rtpi", "mapped_lun")


def parse_aptpl(text: str) -> tuple[dict[str, str], ...]:
    """The registrations in an APTPL file, each as its fields in the kernel's order; () for a file without
    registrations ("No Registrations or Reservations") or an empty one. A block without PR_REG_END (a file
    read while the kernel wrote it) is left out: the next read sees it whole."""
    out: list[dict[str, str]] = []
    block: dict[str, str] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("PR_REG_START:"):
            block = {}
        elif line.startswith("PR_REG_END:"):
            if block is not None:
                out.append(block)
            block = None
        elif block is not None and "=" in line:
            key, _, value = line.partition("=")
            block[key.strip()] = value.strip()
    return tuple(out)


def nexus(block: Mapping[str, str]) -> tuple[str, ...]:
    """What identifies a registration: the I_T nexus (initiator port, target port) and the mapped LUN."""
    return tuple(block.get(k, "").lower() for k in NEXUS_FIELDS)


def canonical(blocks: tuple[dict[str, str], ...]) -> tuple[tuple[tuple[str, str], ...], ...]:
    """The registrations as a comparable value: in no particular order (LIO lists them as it holds them, and
    numbers the blocks in that order), case-insensitive."""
    return tuple(sorted(tuple(sorted((k, v.lower()) for k, v in b.items())) for b in blocks))


def merge(published: tuple[dict[str, str], ...], local: tuple[dict[str, str], ...]) -> tuple[dict[str, str], ...]:
    """What a new active holds: the state the previous active published, plus the registrations this
    controller took through its own (Standby) ports for nexuses the published state does not have, but only
    under a key the published state still has. A PREEMPT or CLEAR on the active removed a key from every
    target port, but only on the active: a copy kept here must not bring a fenced guest back. The reservation
    is the published one only."""
    keys = {b.get("sa_res_key") for b in published}
    seen = {nexus(b) for b in published}
    extra = []
    for b in local:
        if nexus(b) in seen or b.get("sa_res_key") not in keys:
            continue
        kept = {k: v for k, v in b.items() if k not in ("res_type", "res_scope")}
        kept["res_holder"] = "0"
        extra.append(kept)
    return (*published, *extra)


def metadata_lines(blocks: tuple[dict[str, str], ...]) -> list[str]:
    """One ``res_aptpl_metadata`` line per registration (the holder's carries res_type and res_scope)."""
    for b in blocks:
        missing = [k for k in ("initiator_node", "sa_res_key", "target_node", "tpgt", "port_rtpi", "target_lun")
                   if not b.get(k)]
        if missing:
            raise ValueError(f"APTPL registration without {', '.join(missing)}: {dict(b)}")
    return [",".join(f"{k}={v}" for k, v in b.items()) for b in blocks]


def render_aptpl(blocks: tuple[dict[str, str], ...]) -> str:
    """The file as the kernel writes it (core_scsi3_update_aptpl_buf), for the restored state."""
    if not blocks:
        return "No Registrations or Reservations\n"
    parts = []
    for i, b in enumerate(blocks):
        parts.append(f"PR_REG_START: {i}\n" + "".join(f"{k}={v}\n" for k, v in b.items()) + f"PR_REG_END: {i}\n")
    return "".join(parts)
