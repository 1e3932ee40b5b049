"""SCSI-3 persistent reservations on every shared disk, keyed by the election epoch (``Reservations``).

Consumer: ``hacontrol.adapters.fencing.Fencing`` (``observe`` every tick, ``take_over`` in FencePeer,
``register`` in RegisterStandby). The key is ``node_id << 32 | epoch`` (``pr_codec.pr_key``).

Reservation type. The default is WRITE EXCLUSIVE - REGISTRANTS ONLY (type 5): the reservation has a single
holder whose key, read back with READ RESERVATION, names the node *and* the epoch it took over under, so the
disks can be compared with ZooKeeper's leader and epoch (``Storage.holder``). Every registrant may write, so
fencing a controller means removing its registration (PREEMPT [AND ABORT]); a standby's registration is
removed by the next takeover like any other. WRITE EXCLUSIVE - ALL REGISTRANTS (type 7) fences the same way,
but every registrant holds it and READ RESERVATION reports key 0, so the holder cannot be read back: with it,
``holder`` is reported as ourselves when we are registered under an AR reservation (else the registrant with
the newest epoch) - weaker evidence, hence not the default.

take_over(epoch) on each disk: READ KEYS, and refuse (leaving no trace) if any key carries a newer epoch
- the disks enforce the fencing token, so a controller that froze mid-takeover or lags behind ZooKeeper
cannot preempt its successor; REGISTER AND IGNORE EXISTING KEY with the new key; READ KEYS; PREEMPT AND
ABORT every other key (tasks of the fenced nexus are aborted, so its queued writes die with it), falling
back to PREEMPT when the device answers ILLEGAL REQUEST / INVALID FIELD IN CDB (tgt has no PREEMPT AND
ABORT; the fallback is remembered per disk and logged); RESERVE if we do not hold the reservation (RELEASE
first if we hold it with another type); then READ KEYS + READ RESERVATION again and verify: our key is
registered, we hold the reservation with the configured type, and every other key is the peer's under this
very epoch (a standby that saw us lead and registered meanwhile; by construction never a stale writer).

require_all (``fencing.require_all_disks``). A disk that *answers* (any SCSI status) must be fenced and
verified, whatever the setting: a refusal there always fails the takeover. The setting only decides about
disks that do not answer at all (cannot be opened, no path, timeout, connection lost): with True they fail
the takeover; with False they are reported (log + the returned detail) and skipped, as long as at least one
disk was fenced. observe() follows the same rule: with False, unreadable disks are left out of
``my_key_epoch`` / ``holder`` / ``stale_peer_key`` and ``visible`` is False only when no disk can be read.
What False costs: a disk this controller cannot reach may still be reachable (and writable) by the peer.

observe() cache. Reads (READ KEYS + READ RESERVATION per disk, disks in parallel) are reused for ``cache_s``
(default 0.25 s), so the agent's 10 Hz loop reads each disk at most 4 times a second; a lost key shows up
at most ``cache_s`` + one tick + one read later (~0.4 s). take_over() and register() replace the cache
with what they just read back. Each read is bounded by ``observe_timeout_s``.

Each disk's commands run in their own daemon thread, so a hung device (SCSI error handling can hold an
SG_IO ioctl past its timeout) costs the caller its deadline once; while that command is outstanding the
disk is reported unreachable at once instead of queueing more work behind it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, wait
from dataclasses import dataclass, field

import structlog

from hacontrol.adapters.fencing import pr_codec as pr
from hacontrol.adapters.fencing.pr_transport import (
    STATUS_CHECK_CONDITION,
    STATUS_RESERVATION_CONFLICT,
    PrTransport,
    ScsiReply,
    TransportError,
    open_transport,
)
from hacontrol.agent.protocols import AdapterError
from hacontrol.core.model import Storage

log = structlog.get_logger("hacontrol.fencing")

RESERVATION_TYPES = {"write_exclusive_registrants_only": pr.PrType.WRITE_EXCLUSIVE_REGISTRANTS_ONLY,
                     "write_exclusive_all_registrants": pr.PrType.WRITE_EXCLUSIVE_ALL_REGISTRANTS}
PR_IN_ALLOC = 8192
UNIT_ATTENTION_RETRIES = 3  # a UA (reset, nexus loss, "registrations preempted") is reported once per nexus
ILLEGAL_REQUEST = 0x5
UNIT_ATTENTION = 0x6
INVALID_FIELD_IN_CDB = (0x24, 0x00)
INVALID_OPCODE = (0x20, 0x00)


class PrRefused(AdapterError):
    """The device answered, but not as fencing needs (conflict, illegal request, verification failed)."""


@dataclass(frozen=True)
class DiskView:
    """One disk's registrations and reservation, as read."""

    device: str
    keys: tuple[int, ...]
    holder_key: int | None  # None: no reservation; 0 under an all-registrants type
    pr_type: int | None
    generation: int = 0


@dataclass(frozen=True)
class DiskOutcome:
    device: str
    view: DiskView | None = None
    error: str = ""
    reachable: bool = True  # False: the device gave no answer (TransportError)
    detail: str = ""


def judge(outcomes: Sequence[DiskOutcome], require_all: bool) -> str:
    """'' if fencing succeeded on these outcomes, else why not (the require_all rule, see module docstring)."""
    refused = [o for o in outcomes if o.error and o.reachable]
    unreachable = [o for o in outcomes if o.error and not o.reachable]
    if refused:
        return "; ".join(o.error for o in refused)
    if unreachable and require_all:
        return "; ".join(o.error for o in unreachable) + " (require_all_disks = true: every disk must be fenced)"
    if not any(not o.error for o in outcomes):
        return "no disk could be fenced: " + "; ".join(o.error for o in unreachable)
    return ""


@dataclass
class _Disk:
    transport: PrTransport
    abort_supported: bool | None = None  # None: not tried yet
    pending: Future | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.transport.name

    def busy(self) -> bool:
        return self.pending is not None and not self.pending.done()

    def start(self, job: Callable[[_Disk], DiskOutcome]) -> Future:
        future: Future = Future()

        def run() -> None:
            try:
                future.set_result(job(self))
            except BaseException as exc:  # handed to the caller through the future
                future.set_exception(exc)

        self.pending = future
        threading.Thread(target=run, name=f"pr:{self.name}", daemon=True).start()
        return future


class ScsiReservations:
    def __init__(self, devices: Sequence[str], *, node_id: int, peer_id: int, timeout_s: float,
                 reservation_type: str | int = "write_exclusive_registrants_only", require_all: bool = True,
                 names: Mapping[int, str] | None = None, cache_s: float = 0.25, observe_timeout_s: float = 0.5,
                 command_timeout_s: float = 2.0, initiator_name: str | None = None,
                 transports: Sequence[PrTransport] | None = None, clock: Callable[[], float] = time.monotonic):
        pr.pr_key(node_id, 0), pr.pr_key(peer_id, 0)  # range checks: ValueError names the bad id
        if node_id == peer_id:
            raise ValueError(f"node id {node_id} is also the peer's: the keys would be indistinguishable")
        if isinstance(reservation_type, str):
            if reservation_type not in RESERVATION_TYPES:
                raise ValueError(f"reservation type {reservation_type!r}: use one of {sorted(RESERVATION_TYPES)}")
            reservation_type = RESERVATION_TYPES[reservation_type]
        self.pr_type = pr.PrType(reservation_type)
        initiator = initiator_name or f"iqn.2024-01.org.hacontrol:node-{node_id}"
        made = transports if transports is not None else [open_transport(d, initiator) for d in devices]
        if not made:
            raise ValueError("scsi_pr fencing needs at least one shared disk")
        self.disks = [_Disk(t) for t in made]
        self.node_id, self.peer_id = node_id, peer_id
        self.names = dict(names or {node_id: f"node-{node_id}", peer_id: f"node-{peer_id}"})
        self.timeout_s, self.require_all = timeout_s, require_all
        self.cache_s, self.observe_timeout_s, self.command_timeout_s = cache_s, observe_timeout_s, command_timeout_s
        self.clock = clock
        self._cache: list[DiskOutcome] | None = None
        self._cache_at = 0.0
        self._failing: frozenset[str] = frozenset()

    # --- the Reservations protocol ---------------------------------------------------------------------

    def observe(self, epoch_seen: int) -> Storage:
        now = self.clock()
        if self._cache is None or now - self._cache_at >= self.cache_s:
            self._remember(self._run(self._read_disk, now + self.observe_timeout_s), now)
        assert self._cache is not None
        return self.storage(self._cache, epoch_seen)

    def take_over(self, epoch: int, deadline: float) -> str:
        key = pr.pr_key(self.node_id, epoch)
        deadline = min(deadline, self.clock() + self.timeout_s)
        outcomes = self._run(lambda d, dl: self._take_over_disk(d, key, epoch, dl), deadline)
        self._remember(outcomes, self.clock(), after_change=True)
        problem = judge(outcomes, self.require_all)
        log.info("pr_take_over", epoch=epoch, key=f"0x{key:x}", ok=not problem,
                 disks={o.device: o.error or o.detail for o in outcomes})
        if problem:
            raise PrRefused(f"takeover under epoch {epoch} not fenced: {problem}")
        return self._summary(outcomes, key)

    def register(self, epoch: int, deadline: float) -> None:
        key = pr.pr_key(self.node_id, epoch)
        deadline = min(deadline, self.clock() + self.timeout_s)
        outcomes = self._run(lambda d, dl: self._register_disk(d, key, dl), deadline)
        self._remember(outcomes, self.clock(), after_change=True)
        problem = judge(outcomes, self.require_all)
        log.info("pr_register", epoch=epoch, key=f"0x{key:x}", ok=not problem,
                 disks={o.device: o.error or "registered" for o in outcomes})
        if problem:
            raise PrRefused(f"standby registration under epoch {epoch} failed: {problem}")

    @property
    def last_outcomes(self) -> list[DiskOutcome]:
        """Per-disk results of the last read, takeover or registration (for tools and logs)."""
        return list(self._cache or [])

    def close(self) -> None:
        for disk in self.disks:
            if not disk.busy():
                disk.transport.close()

    # --- what observe() reports ------------------------------------------------------------------------

    def storage(self, outcomes: Sequence[DiskOutcome], epoch_seen: int) -> Storage:
        """Fold per-disk views into the core's Storage (see the module docstring for the rules)."""
        views = [o.view for o in outcomes if o.view is not None]
        failed = [o for o in outcomes if o.view is None]
        visible = bool(views) and (not failed or not self.require_all)
        if not visible:
            return Storage(pr=True, visible=False)
        mine = {self._my_epoch(v) for v in views}
        holders = {self._holder(v) for v in views}
        my_epoch = mine.pop() if len(mine) == 1 else None
        holder = holders.pop() if len(holders) == 1 else None
        stale = any(self._stale(k, epoch_seen) for v in views for k in v.keys)
        return Storage(pr=True, visible=True, my_key_epoch=my_epoch, holder=holder, stale_peer_key=stale)

    def _my_epoch(self, view: DiskView) -> int | None:
        epochs = [e for n, e in map(pr.key_parts, view.keys) if n == self.node_id]
        return max(epochs) if epochs else None

    def _holder(self, view: DiskView) -> tuple[str, int] | None:
        if view.pr_type is None:
            return None
        if pr.PrType(view.pr_type).all_registrants:
            # Every registrant holds it: report ourselves if registered, else the newest registration.
            mine = self._my_epoch(view)
            if mine is not None:
                return self._name(self.node_id), mine
            known = sorted((-e, n) for n, e in map(pr.key_parts, view.keys) if n)
            return (self._name(known[0][1]), -known[0][0]) if known else None
        node, epoch = pr.key_parts(view.holder_key or 0)
        return (self._name(node), epoch) if node else None

    def _stale(self, key: int, epoch_seen: int) -> bool:
        """A key that lets someone other than us write although it belongs to no current leadership."""
        node, epoch = pr.key_parts(key)
        if node == self.node_id:
            return False
        return node != self.peer_id or epoch < epoch_seen

    def _name(self, node_id: int) -> str:
        return self.names.get(node_id, f"node-{node_id}")

    # --- per disk --------------------------------------------------------------------------------------

    def _read_disk(self, disk: _Disk, deadline: float) -> DiskOutcome:
        return DiskOutcome(disk.name, self._read(disk, deadline))

    def _take_over_disk(self, disk: _Disk, key: int, epoch: int, deadline: float) -> DiskOutcome:
        self._refuse_newer(disk, self._read_keys(disk, deadline), epoch)  # before leaving any trace
        self._out(disk, pr.register_and_ignore(key), deadline)
        view = self._read(disk, deadline)
        try:
            self._refuse_newer(disk, view.keys, epoch)
        except PrRefused:
            # Overtaken between our check and our REGISTER: withdraw the key, or it would sit there as a
            # stale registration that makes the new holder doubt its fence.
            self._command(disk, pr.register(key, 0), deadline)
            raise
        done = [self._preempt(disk, key, victim, deadline) for victim in sorted(set(view.keys) - {key})]
        if done:
            view = self._read(disk, deadline)
        holder = view.holder_key
        if view.pr_type is not None and not self._ours(view, key) and holder and holder != key:
            # The holder changed its key between our READ KEYS and our PREEMPT (a demoted controller that
            # re-registered as standby): its nexus still holds the reservation. Preempt that key too, once.
            done.append(self._preempt(disk, key, holder, deadline))
            view = self._read(disk, deadline)
        if view.pr_type is not None and not self._ours(view, key) and not pr.PrType(view.pr_type).all_registrants:
            raise PrRefused(f"{disk.name}: after PREEMPT the reservation is still held by "
                            f"{pr.describe_key(view.holder_key or 0)}")
        if not self._holds(view, key):
            if view.pr_type is not None and view.pr_type != self.pr_type and self._ours(view, key):
                self._out(disk, pr.release(key, view.pr_type), deadline)  # we hold it, but as another type
            self._out(disk, pr.reserve(key, self.pr_type), deadline)
            done.append("RESERVE")
        view = self._read(disk, deadline)
        problem = self._verify(view, key, epoch)
        if problem:
            raise PrRefused(f"{disk.name}: read-back after takeover: {problem}")
        return DiskOutcome(disk.name, view, detail=", ".join(done) or "already held")

    def _register_disk(self, disk: _Disk, key: int, deadline: float) -> DiskOutcome:
        self._refuse_newer(disk, self._read_keys(disk, deadline), pr.key_parts(key)[1])
        self._out(disk, pr.register_and_ignore(key), deadline)
        view = self._read(disk, deadline)
        if key not in view.keys:
            raise PrRefused(f"{disk.name}: key {pr.describe_key(key)} not in READ KEYS after registering")
        return DiskOutcome(disk.name, view)

    @staticmethod
    def _refuse_newer(disk: _Disk, keys: Sequence[int], epoch: int) -> None:
        """The disks enforce the fencing token: nobody acts on them under an epoch older than one registered.

        This is what stops a controller that froze mid-takeover (or whose ZooKeeper view lags) from
        preempting, or leaving a stale key beside, the controller that took over after it.
        """
        newer = sorted(k for k in keys if pr.key_parts(k)[0] and pr.key_parts(k)[1] > epoch)
        if newer:
            raise PrRefused(f"{disk.name}: {pr.describe_key(newer[-1])} is registered under a newer epoch than "
                            f"{epoch}: this controller's leadership is stale, the disk is left untouched (if "
                            f"ZooKeeper's epoch counter was reset, clear the registrations by hand)")

    def _preempt(self, disk: _Disk, key: int, victim: int, deadline: float) -> str:
        """Remove ``victim``'s registrations; returns what did it. PREEMPT AND ABORT first, PREEMPT if unsupported."""
        if disk.abort_supported is not False:
            reply = self._command(disk, pr.preempt(key, victim, self.pr_type, abort=True), deadline)
            if reply.ok:
                disk.abort_supported = True
                return f"PREEMPT AND ABORT {victim:#x}"
            if not _unsupported(reply):
                return self._preempt_failed(disk, key, victim, reply, deadline)
            disk.abort_supported = False
            log.warning("pr_preempt_abort_unsupported", device=disk.name, answer=reply.describe(),
                        fallback="PREEMPT (in-flight commands of the fenced controller are not aborted)")
        reply = self._command(disk, pr.preempt(key, victim, self.pr_type, abort=False), deadline)
        if reply.ok:
            return f"PREEMPT {victim:#x}"
        return self._preempt_failed(disk, key, victim, reply, deadline)

    def _preempt_failed(self, disk: _Disk, key: int, victim: int, reply: ScsiReply, deadline: float) -> str:
        # RESERVATION CONFLICT has two readings: our registration is gone (someone preempted us meanwhile),
        # or the victim's key vanished before our PREEMPT reached it. READ KEYS tells which.
        if reply.status == STATUS_RESERVATION_CONFLICT:
            keys = self._read(disk, deadline).keys
            if key not in keys:
                raise PrRefused(f"{disk.name}: RESERVATION CONFLICT preempting {victim:#x}: our key "
                                f"{pr.describe_key(key)} was removed meanwhile (another controller fenced us)")
            if victim not in keys:
                return f"{victim:#x} already gone"
        raise PrRefused(f"{disk.name}: PREEMPT of {pr.describe_key(victim)} answered {reply.describe()}")

    def _holds(self, view: DiskView, key: int) -> bool:
        return view.pr_type == self.pr_type and self._ours(view, key)

    def _ours(self, view: DiskView, key: int) -> bool:
        if view.pr_type is None or key not in view.keys:
            return False
        return pr.PrType(view.pr_type).all_registrants or view.holder_key == key

    def _verify(self, view: DiskView, key: int, epoch: int) -> str:
        if key not in view.keys:
            return f"our key {pr.describe_key(key)} is not registered"
        if not self._holds(view, key):
            holder = "nobody" if view.pr_type is None else f"{pr.describe_key(view.holder_key or 0)} type " \
                                                           f"{view.pr_type}"
            return f"reservation held by {holder}, not by us with type {int(self.pr_type)}"
        standby = pr.pr_key(self.peer_id, epoch)
        others = sorted({k for k in view.keys if k not in (key, standby)})
        if others:
            return "still registered: " + ", ".join(pr.describe_key(k) for k in others)
        return ""

    # --- commands ------------------------------------------------------------------------------------

    def _read_keys(self, disk: _Disk, deadline: float) -> tuple[int, ...]:
        return pr.parse_read_keys(self._pr_in(disk, pr.PrIn.READ_KEYS, deadline)).keys

    def _read(self, disk: _Disk, deadline: float) -> DiskView:
        keys = pr.parse_read_keys(self._pr_in(disk, pr.PrIn.READ_KEYS, deadline))
        held = pr.parse_read_reservation(self._pr_in(disk, pr.PrIn.READ_RESERVATION, deadline))
        return DiskView(disk.name, keys.keys, held.key, held.pr_type, keys.generation)

    def _pr_in(self, disk: _Disk, action: pr.PrIn, deadline: float) -> bytes:
        reply = self._send(disk, pr.cdb_pr_in(action, PR_IN_ALLOC), None, PR_IN_ALLOC, deadline)
        if not reply.ok:
            raise PrRefused(f"{disk.name}: {action.name.replace('_', ' ')} answered {reply.describe()}"
                            f"{_hint(reply)}")
        return reply.data

    def _out(self, disk: _Disk, command: pr.PrOutCommand, deadline: float) -> None:
        reply = self._command(disk, command, deadline)
        if not reply.ok:
            raise PrRefused(f"{disk.name}: {command.name} answered {reply.describe()}{_hint(reply)}")

    def _command(self, disk: _Disk, command: pr.PrOutCommand, deadline: float) -> ScsiReply:
        return self._send(disk, command.cdb, command.data, 0, deadline)

    def _send(self, disk: _Disk, cdb: bytes, data_out: bytes | None, data_in_len: int,
              deadline: float) -> ScsiReply:
        """One command, retried on UNIT ATTENTION (bounded): a UA only reports an event, it did not execute."""
        reply = ScsiReply(STATUS_CHECK_CONDITION)
        for _ in range(UNIT_ATTENTION_RETRIES + 1):
            remaining = deadline - self.clock()
            if remaining <= 0:
                raise TransportError(f"{disk.name}: fencing deadline passed before opcode 0x{cdb[0]:02X}")
            reply = disk.transport.command(cdb, data_out=data_out, data_in_len=data_in_len,
                                           timeout_s=min(remaining, self.command_timeout_s))
            if not (reply.sense is not None and reply.sense.key == UNIT_ATTENTION):
                return reply
            log.info("pr_unit_attention", device=disk.name, sense=reply.sense.describe())
        return reply

    # --- running jobs on every disk ------------------------------------------------------------------

    def _run(self, job: Callable[[_Disk, float], DiskOutcome], deadline: float) -> list[DiskOutcome]:
        """``job`` on every disk in parallel, bounded by ``deadline``; errors become outcomes."""
        futures: dict[int, Future] = {}
        outcomes: dict[int, DiskOutcome] = {}
        for i, disk in enumerate(self.disks):
            if disk.busy():
                outcomes[i] = DiskOutcome(disk.name, error=f"{disk.name}: an earlier command is still "
                                          "outstanding (device hung?)", reachable=False)
            else:
                futures[i] = disk.start(lambda d, job=job: job(d, deadline))
        wait(list(futures.values()), timeout=max(0.0, deadline - self.clock()) + 0.05)
        for i, future in futures.items():
            outcomes[i] = _outcome(self.disks[i].name, future, deadline)
        return [outcomes[i] for i in range(len(self.disks))]

    def _remember(self, outcomes: list[DiskOutcome], at: float, after_change: bool = False) -> None:
        """Keep reads for observe(). A takeover or registration that a disk refused keeps nothing: that disk has
        no view, and the next observe() must read it rather than report it unreadable."""
        self._cache, self._cache_at = outcomes, at
        if after_change and any(o.view is None and o.reachable for o in outcomes):
            self._cache = None
            return
        failing = frozenset(o.device for o in outcomes if o.view is None)
        if failing != self._failing:
            log.warning("pr_disks_unreadable" if failing else "pr_disks_readable",
                        disks={o.device: o.error for o in outcomes if o.view is None})
            self._failing = failing

    def _summary(self, outcomes: Sequence[DiskOutcome], key: int) -> str:
        fenced = [o for o in outcomes if not o.error]
        actions = sorted({o.detail for o in fenced})
        skipped = [o.device for o in outcomes if o.error]
        text = f"key {key:#x} holds {len(fenced)}/{len(outcomes)} disks ({'; '.join(actions)})"
        return text + (f"; unreachable, skipped: {', '.join(skipped)}" if skipped else "")


def _outcome(device: str, future: Future, deadline: float) -> DiskOutcome:
    if not future.done():
        return DiskOutcome(device, error=f"{device}: no answer before the fencing deadline", reachable=False)
    try:
        return future.result()
    except TransportError as exc:
        return DiskOutcome(device, error=str(exc), reachable=False)
    except (PrRefused, ValueError) as exc:
        return DiskOutcome(device, error=str(exc))


def _unsupported(reply: ScsiReply) -> bool:
    """The device does not implement the service action: ILLEGAL REQUEST, INVALID FIELD IN CDB (or opcode)."""
    sense = reply.sense
    return (reply.status == STATUS_CHECK_CONDITION and sense is not None and sense.key == ILLEGAL_REQUEST
            and (sense.asc, sense.ascq) in (INVALID_FIELD_IN_CDB, INVALID_OPCODE))


def _hint(reply: ScsiReply) -> str:
    sense = reply.sense
    if reply.status == STATUS_RESERVATION_CONFLICT:
        return " (another controller holds the reservation, or this one's registration was removed)"
    if sense is not None and sense.key == 0x2:
        return " (NOT READY: on LIO, persistent reservations need /etc/rtslib-fb-target/pr to exist)"
    if _unsupported(reply):
        return " (the device does not support this persistent reservation command)"
    return ""
