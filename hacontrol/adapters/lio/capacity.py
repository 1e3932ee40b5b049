"""How full each LUN's backing store is, and whether it crossed its warning threshold.

A LUN on a dm-thin volume (an LVM thin LV, or plain dm-thin) is reported with its **pool's** use: the larger
of data and metadata use, since either running out fails writes. LIO cannot tell an initiator "out of space"
the way VMware wants (docs/lio.md: it answers NOT READY 02/08/00, not DATA PROTECT 07/27/07), so the warning
before it happens is what protects the VMs. A thick device (raw disk, SAN LUN, linear LV) is fully allocated
and has no fill level: it is reported as ``thick`` without a ratio.

Two ``dmsetup`` runs read every device-mapper table and status at once (one per LUN would not scale to 1,024
LUNs); the parsing is pure and unit-tested.
"""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from hacontrol.config.schema import Config

DMSETUP_TIMEOUT_S = 5.0
HYSTERESIS = 0.02  # a LUN over its threshold is reported recovered only this far below it


@dataclass(frozen=True)
class PoolUsage:
    name: str
    data_used: int
    data_total: int
    meta_used: int
    meta_total: int
    mode: str = ""  # rw | ro | out_of_data_space | ...

    @property
    def ratio(self) -> float:
        parts = [u / t for u, t in ((self.data_used, self.data_total), (self.meta_used, self.meta_total)) if t]
        return max(parts) if parts else 0.0


@dataclass(frozen=True)
class CapacityReading:
    lun: str
    device: str
    kind: str  # dm-thin | thick | unknown
    threshold_ratio: float
    used_ratio: float | None = None
    pool: str = ""
    pool_mode: str = ""

    @property
    def over(self) -> bool:
        return self.used_ratio is not None and self.used_ratio >= self.threshold_ratio

    def as_dict(self) -> dict[str, object]:
        return {"lun": self.lun, "device": self.device, "kind": self.kind, "pool": self.pool,
                "used_ratio": None if self.used_ratio is None else round(self.used_ratio, 4),
                "threshold_ratio": self.threshold_ratio, "over": self.over, "pool_mode": self.pool_mode}


def parse_lines(text: str) -> dict[str, list[str]]:
    """``dmsetup table`` / ``status`` output: device name -> the fields of its (first) target line."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        name, sep, rest = line.partition(": ")
        if sep and name not in out:
            out[name] = rest.split()
    return out


def parse_pool_status(name: str, fields: list[str]) -> PoolUsage | None:
    """``<start> <len> thin-pool <transaction> <meta used>/<total> <data used>/<total> <held root> <mode> ..."""
    if len(fields) < 6 or fields[2] != "thin-pool":
        return None
    try:
        meta_used, meta_total = (int(x) for x in fields[4].split("/"))
        data_used, data_total = (int(x) for x in fields[5].split("/"))
    except ValueError:
        return None
    mode = fields[7] if len(fields) > 7 else ""
    return PoolUsage(name, data_used, data_total, meta_used, meta_total, mode)


def thin_pools(tables: Mapping[str, list[str]], statuses: Mapping[str, list[str]],
               dm_name_of: Callable[[str], str | None]) -> dict[str, PoolUsage]:
    """Thin device name -> its pool's usage. ``dm_name_of("253:2")`` resolves the pool's major:minor."""
    out = {}
    for name, fields in tables.items():
        if len(fields) >= 4 and fields[2] == "thin":
            pool = dm_name_of(fields[3])
            usage = parse_pool_status(pool, statuses.get(pool, [])) if pool else None
            if usage is not None:
                out[name] = usage
    return out


def dm_name(device: str) -> str | None:
    """The device-mapper name of a block device path (None if it is not a dm device)."""
    try:
        st = os.stat(device)
    except OSError:
        return None
    if not stat.S_ISBLK(st.st_mode):
        return None
    return dm_name_by_number(f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}")


def dm_name_by_number(number: str) -> str | None:
    try:
        with open(f"/sys/dev/block/{number}/dm/name") as f:
            return f.read().strip()
    except OSError:
        return None


def _dmsetup(*args: str) -> str:
    try:
        return subprocess.run(["dmsetup", *args], capture_output=True, text=True, timeout=DMSETUP_TIMEOUT_S,
                              check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return ""  # no device mapper (or no dmsetup): every LUN reads as thick/unknown


def lun_devices(cfg: Config) -> list[tuple[str, str, float]]:
    """(lun name, device, threshold ratio) for every configured LUN."""
    return [(lun.name, lun.device, lun.capacity_warn_percent / 100.0) for t in cfg.targets for lun in t.luns]


def read_capacity(luns: Iterable[tuple[str, str, float]], run: Callable[..., str] = _dmsetup,
                  name_of: Callable[[str], str | None] = dm_name,
                  number_of: Callable[[str], str | None] = dm_name_by_number) -> list[CapacityReading]:
    luns = list(luns)
    names = {device: name_of(device) for _, device, _ in luns}
    pools: dict[str, PoolUsage] = {}
    if any(names.values()):
        pools = thin_pools(parse_lines(run("table")), parse_lines(run("status")), number_of)
    out = []
    for lun, device, threshold in luns:
        name = names[device]
        usage = pools.get(name) if name else None
        if usage is not None:
            out.append(CapacityReading(lun, device, "dm-thin", threshold, usage.ratio, usage.name, usage.mode))
        else:
            out.append(CapacityReading(lun, device, "thick" if os.path.exists(device) else "unknown", threshold))
    return out


class ThresholdWatch:
    """Edge detection with hysteresis: which LUNs just crossed their threshold, which just recovered."""

    def __init__(self) -> None:
        self.over: set[str] = set()

    def update(self, readings: Iterable[CapacityReading]) -> tuple[list[CapacityReading], list[CapacityReading]]:
        crossed, recovered = [], []
        for r in readings:
            if r.used_ratio is None:
                continue
            if r.over and r.lun not in self.over:
                self.over.add(r.lun)
                crossed.append(r)
            elif r.lun in self.over and r.used_ratio < r.threshold_ratio - HYSTERESIS:
                self.over.discard(r.lun)
                recovered.append(r)
        return crossed, recovered
