"""The difference between what tgtd holds and what the configuration wants, as ordered steps (pure).

Every :class:`Step` is one tgtadm command with the commands that reverse it,
so ``apply`` can roll back what it did. Order matters:

1. targets, then LUNs (a LUN gets its identity right after it is created,
   before any ACL of a new target admits an initiator);
2. accounts: created, unbound, deleted and re-created, bound again;
3. ACL binds, then ACL unbinds (make before break);
4. last, what goes away: LUNs and targets no longer configured, accounts no
   longer used. These are the least reversible (PR registrations of a LUN, an
   account's unreadable secret), so a failure earlier never reaches them.

**tgt 1.0.85 bug avoided here.** Unbinding an incoming account that is not the
last one bound to a target leaves a hole in tgt's account array: the next
``--op show`` dereferences NULL and tgtd dies (measured; ``account_ctl`` /
``tgt_target_show_all`` in ``usr/target.c``), and the accounts after the hole
stop working. ``account --op delete`` unbinds the same way. So accounts are
only ever unbound from the tail: to remove one, the adapter unbinds it and every
account bound after it (last first), then binds back those that stay.

**What tgtadm cannot show** (CHAP secrets, vendor/product ids, the write-cache
mode page) is compared with :class:`Known`, what this adapter instance last set.
With no record (a fresh agent, tgtd kept running) the adapter adopts what is
there, unless ``reassert`` asks it to set everything again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from hacontrol.core.problems import Problem

from . import commands as cmd
from .desired import Desired, DesiredAccount, DesiredLun, DesiredTarget, LunExtras
from .snapshot import TgtLun, TgtSnapshot, TgtTargetState
from .tgtadm import Command


class StepKind(StrEnum):
    CREATE_TARGET = "create_target"
    SET_TARGET_STATE = "set_target_state"
    CREATE_LUN = "create_lun"
    SET_LUN = "set_lun"
    DELETE_LUN = "delete_lun"
    BIND_ACL = "bind_acl"
    UNBIND_ACL = "unbind_acl"
    CREATE_ACCOUNT = "create_account"
    DELETE_ACCOUNT = "delete_account"
    BIND_ACCOUNT = "bind_account"
    UNBIND_ACCOUNT = "unbind_account"
    DELETE_TARGET = "delete_target"


@dataclass(frozen=True)
class Step:
    kind: StepKind
    subject: str  # what it acts on, for logs and errors; never a secret
    command: Command
    undo: tuple[Command, ...] = ()
    note: str = ""  # what a rollback of this step cannot restore

    def __str__(self) -> str:
        return f"{self.kind.value} {self.subject}"


@dataclass(frozen=True)
class Known:
    """What this adapter instance set and tgtadm cannot show; keys absent = never set by this instance."""

    luns: Mapping[tuple[int, int], LunExtras] = field(default_factory=dict)  # (tid, lun)
    accounts: Mapping[str, DesiredAccount] = field(default_factory=dict)


def assign_tids(desired: Desired, snap: TgtSnapshot, tid_base: int) -> dict[str, int]:
    """A tid per configured IQN: the one tgtd already uses, else ``tid_base + index`` when free.

    The same configuration on two fresh tgtds gives the same tids, so tgt's
    NAA-3 designator (tid << 32 | lun) matches on both controllers too.
    """
    tids = {dt.iqn: st.tid for dt in desired.targets
            if (st := snap.target(dt.iqn)) is not None and st.tid >= tid_base}
    used = {t.tid for t in snap.targets}
    for index, dt in enumerate(desired.targets):
        if dt.iqn in tids:
            continue
        tid = tid_base + index
        while tid in used or tid in tids.values():
            tid += 1
        tids[dt.iqn] = tid
    return tids


def snapshot_problems(desired: Desired, snap: TgtSnapshot, tid_base: int) -> list[Problem]:
    """Conflicts with what tgtd holds outside the adapter's range, and targets it cannot remove."""
    p: list[Problem] = []
    for ti, dt in enumerate(desired.targets):
        st = snap.target(dt.iqn)
        if st is not None and st.tid < tid_base:
            p.append(Problem(f"target[{ti}].iqn", dt.iqn, f"tgtd already has this target as tid {st.tid}, below "
                             f"the adapter's tid_base {tid_base}, which it does not manage",
                             "delete that target from tgtd, or lower tid_base"))
    wanted = {dt.iqn for dt in desired.targets}
    for st in snap.targets:
        if st.tid >= tid_base and st.iqn not in wanted and st.nexuses:
            p.append(Problem("target", st.iqn, f"is no longer configured but has {len(st.nexuses)} session(s)",
                             "log the initiators out first (the adapter does not drop sessions to delete a target)"))
    return p


def diff(desired: Desired, snap: TgtSnapshot, *, tid_base: int, known: Known = Known(),
         reassert: bool = False) -> list[Step]:
    """The steps that turn ``snap`` into ``desired``, in the order of the module docstring (pure).

    Targets with tid >= ``tid_base`` are the adapter's: those no longer
    configured are removed. Targets below it are only read.
    """
    tids = assign_tids(desired, snap, tid_base)
    managed = {st.tid: st for st in snap.targets if st.tid >= tid_base}
    steps: list[Step] = []
    for dt in desired.targets:
        st = managed.get(tids[dt.iqn])
        steps.extend(_target_steps(dt, tids[dt.iqn], st, known, reassert=reassert))
    steps.extend(_account_steps(desired, snap, tids, tid_base, known=known, reassert=reassert))
    for dt in desired.targets:
        st = managed.get(tids[dt.iqn])
        have = st.acl if st else ()
        steps.extend(_acl_step(tids[dt.iqn], dt.iqn, e, bind=True) for e in dt.acl if e not in have)
    for dt in desired.targets:
        st = managed.get(tids[dt.iqn])
        steps.extend(_acl_step(st.tid, dt.iqn, e, bind=False) for e in (st.acl if st else ()) if e not in dt.acl)
    steps.extend(_removals(desired, managed, tids, known))
    steps.extend(_doomed_account_deletes(desired, snap, tid_base))
    return steps


def _target_steps(dt: DesiredTarget, tid: int, st: TgtTargetState | None, known: Known, *,
                  reassert: bool) -> list[Step]:
    steps: list[Step] = []
    if st is None:
        steps.append(Step(StepKind.CREATE_TARGET, f"{dt.iqn} (tid {tid})", cmd.new_target(tid, dt.iqn),
                          undo=(cmd.delete_target(tid, force=True),)))
    elif st.state != "ready":
        steps.append(Step(StepKind.SET_TARGET_STATE, f"{dt.iqn} {st.state} -> ready",
                          cmd.set_target_state(tid, "ready"), undo=(cmd.set_target_state(tid, st.state),)))
    for dl in dt.luns:
        have = st.lun(dl.lun) if st else None
        subject = f"{dt.iqn} LUN {dl.lun}"
        if have is not None and (have.path != dl.path or have.type != "disk"):
            # Another backing store under the same LUN id is another disk: replace it.
            steps.append(_delete_lun_step(tid, subject, have, known.luns.get((tid, dl.lun))))
            have = None
        if have is None:
            steps.append(Step(StepKind.CREATE_LUN, f"{subject} on {dl.path}", cmd.new_lun(tid, dl.lun, dl.path),
                              undo=(cmd.delete_lun(tid, dl.lun),)))
            # Undone by the CREATE_LUN undo, which deletes the whole LUN.
            steps.append(Step(StepKind.SET_LUN, f"{subject} identity", cmd.update_lun(tid, dl.lun, lun_params(dl))))
            continue
        step = _lun_update(tid, subject, dl, have, known.luns.get((tid, dl.lun)), reassert=reassert)
        if step is not None:
            steps.append(step)
    return steps


def lun_params(dl: DesiredLun) -> tuple[str, ...]:
    return (f"scsi_id={dl.scsi_id}", f"scsi_sn={dl.scsi_sn}", f"thin_provisioning={int(dl.thin)}",
            *dl.extras.params())


def _lun_update(tid: int, subject: str, dl: DesiredLun, have: TgtLun, before: LunExtras | None, *,
                reassert: bool) -> Step | None:
    params: list[str] = []
    undo: list[str] = []
    names: list[str] = []
    for name, want, got in (("scsi_id", dl.scsi_id, have.scsi_id), ("scsi_sn", dl.scsi_sn, have.scsi_sn),
                            ("thin_provisioning", str(int(dl.thin)), str(int(have.thin))),
                            ("online", "1", str(int(have.online)))):
        if want != got:
            params.append(f"{name}={want}")
            undo.append(f"{name}={got}")
            names.append(name)
    extras_changed = before != dl.extras if before is not None else reassert
    if extras_changed:
        new, old = dl.extras.params(), before.params() if before is not None else ()
        params.extend(p for i, p in enumerate(new) if i >= len(old) or old[i] != p)
        undo.extend(o for i, o in enumerate(old) if new[i] != o)
        names.append("vendor/product/write cache")
    if not params:
        return None
    note = "" if before is not None or not extras_changed else "previous vendor/product/write cache unknown"
    return Step(StepKind.SET_LUN, f"{subject} ({', '.join(names)})", cmd.update_lun(tid, dl.lun, tuple(params)),
                undo=(cmd.update_lun(tid, dl.lun, tuple(undo)),) if undo else (), note=note)


def _recreate_lun(tid: int, lun: TgtLun, extras: LunExtras | None) -> tuple[Command, ...]:
    params = (f"scsi_id={lun.scsi_id}", f"scsi_sn={lun.scsi_sn}", f"thin_provisioning={int(lun.thin)}",
              *(extras.params() if extras is not None else ()))
    return (cmd.new_lun(tid, lun.lun, lun.path or ""), cmd.update_lun(tid, lun.lun, params))


def _delete_lun_step(tid: int, subject: str, lun: TgtLun, extras: LunExtras | None) -> Step:
    return Step(StepKind.DELETE_LUN, f"{subject} on {lun.path}", cmd.delete_lun(tid, lun.lun),
                undo=_recreate_lun(tid, lun, extras), note="persistent reservations on the LUN are lost")


def _acl_step(tid: int, iqn: str, entry: str, bind: bool) -> Step:
    kind = StepKind.BIND_ACL if bind else StepKind.UNBIND_ACL
    return Step(kind, f"{iqn} {entry}", cmd.acl(tid, entry, bind), undo=(cmd.acl(tid, entry, not bind),))


@dataclass(frozen=True)
class _Holder:
    """Something accounts are bound to: a target (tid) or discovery (tid None)."""

    tid: int | None
    name: str
    have_in: tuple[str, ...]
    want_in: tuple[str, ...]
    have_out: str | None
    want_out: str | None


def _holders(desired: Desired, snap: TgtSnapshot, tids: Mapping[str, int], tid_base: int,
             doomed: set[str]) -> list[_Holder]:
    by_tid = {st.tid: st for st in snap.targets}
    holders = [_Holder(None, "discovery", snap.discovery_incoming, desired.discovery_incoming,
                       snap.discovery_outgoing, desired.discovery_outgoing)]
    for dt in desired.targets:
        st = by_tid.get(tids[dt.iqn])
        holders.append(_Holder(tids[dt.iqn], dt.iqn, st.incoming if st else (), dt.incoming,
                               st.outgoing if st else None, dt.outgoing))
    wanted = set(tids.values())
    for st in snap.targets:
        if st.tid in wanted:
            continue
        # Foreign targets keep their accounts; targets about to be deleted lose only doomed ones.
        keep = st.tid < tid_base
        holders.append(_Holder(st.tid, st.iqn, st.incoming, tuple(u for u in st.incoming if keep or u not in doomed),
                               st.outgoing, st.outgoing if keep or st.outgoing not in doomed else None))
    return holders


def doomed_accounts(desired: Desired, snap: TgtSnapshot, tid_base: int) -> set[str]:
    """Accounts no longer configured that only the adapter's targets (or discovery) use.

    Accounts bound to targets below ``tid_base`` are someone else's, and
    accounts bound nowhere are left alone too: nothing says they were ours.
    """
    wanted = {a.user for a in desired.accounts}
    foreign: set[str] = set()
    ours: set[str] = set(snap.discovery_incoming) | {snap.discovery_outgoing or ""}
    for st in snap.targets:
        users = {*st.incoming, st.outgoing or ""}
        (foreign if st.tid < tid_base else ours).update(users)
    return {u for u in snap.accounts if u not in wanted and u in ours and u not in foreign}


def _to_recreate(desired: Desired, snap: TgtSnapshot, known: Known, reassert: bool) -> list[DesiredAccount]:
    out = []
    for account in desired.accounts:
        if account.user not in snap.accounts:
            continue
        before = known.accounts.get(account.user)
        if (before is not None and before.fingerprint != account.fingerprint) or (before is None and reassert):
            out.append(account)
    return out


def _account_steps(desired: Desired, snap: TgtSnapshot, tids: Mapping[str, int], tid_base: int, *, known: Known,
                   reassert: bool) -> list[Step]:
    doomed = doomed_accounts(desired, snap, tid_base)
    recreate = _to_recreate(desired, snap, known, reassert)
    cycled = doomed | {a.user for a in recreate}
    holders = _holders(desired, snap, tids, tid_base, doomed)
    steps = [Step(StepKind.CREATE_ACCOUNT, f"account {a.user}", cmd.new_account(a.user, a.secret),
                  undo=(cmd.delete_account(a.user),)) for a in desired.accounts if a.user not in snap.accounts]
    rebind: list[Step] = []
    for h in holders:
        unbind, bind = _holder_steps(h, cycled)
        steps.extend(unbind)
        rebind.extend(bind)
    for account in recreate:
        before = known.accounts.get(account.user)
        restore = before.secret if before is not None else account.secret
        note = "" if before is not None else "the replaced secret is unknown: a rollback keeps the new one"
        steps.append(Step(StepKind.DELETE_ACCOUNT, f"account {account.user} (new secret)",
                          cmd.delete_account(account.user), undo=(cmd.new_account(account.user, restore),),
                          note=note))
        steps.append(Step(StepKind.CREATE_ACCOUNT, f"account {account.user} (new secret)",
                          cmd.new_account(account.user, account.secret), undo=(cmd.delete_account(account.user),)))
    return steps + rebind


def _holder_steps(h: _Holder, cycled: set[str]) -> tuple[list[Step], list[Step]]:
    """Unbind steps (tail first, see the module docstring) and bind steps for one holder."""
    remove = [i for i, u in enumerate(h.have_in) if u not in h.want_in or u in cycled]
    cut = remove[0] if remove else len(h.have_in)
    kept = h.have_in[:cut]
    unbind = [_account_step(h, u, outgoing=False, bind=False) for u in reversed(h.have_in[cut:])]
    bind = [_account_step(h, u, outgoing=False, bind=True) for u in h.want_in if u not in kept]
    if h.have_out is not None and (h.have_out != h.want_out or h.have_out in cycled):
        unbind.append(_account_step(h, h.have_out, outgoing=True, bind=False))
    if h.want_out is not None and (h.want_out != h.have_out or h.want_out in cycled):
        bind.append(_account_step(h, h.want_out, outgoing=True, bind=True))
    return unbind, bind


def _account_step(h: _Holder, user: str, outgoing: bool, bind: bool) -> Step:
    kind = StepKind.BIND_ACCOUNT if bind else StepKind.UNBIND_ACCOUNT
    direction = "outgoing" if outgoing else "incoming"
    return Step(kind, f"{h.name} {direction} {user}", cmd.account_binding(h.tid, user, outgoing, bind),
                undo=(cmd.account_binding(h.tid, user, outgoing, not bind),))


def _removals(desired: Desired, managed: Mapping[int, TgtTargetState], tids: Mapping[str, int],
              known: Known) -> list[Step]:
    steps: list[Step] = []
    by_iqn = {dt.iqn: dt for dt in desired.targets}
    for tid, st in sorted(managed.items()):
        dt = by_iqn.get(st.iqn)
        if dt is None or tids[dt.iqn] != tid:
            steps.append(Step(StepKind.DELETE_TARGET, f"{st.iqn} (tid {tid})", cmd.delete_target(tid),
                              undo=_recreate_target(st, known), note="persistent reservations are lost"))
            continue
        wanted = {dl.lun for dl in dt.luns}
        steps.extend(_delete_lun_step(tid, f"{st.iqn} LUN {lun.lun}", lun, known.luns.get((tid, lun.lun)))
                     for lun in st.disk_luns if lun.lun not in wanted)
    return steps


def _recreate_target(st: TgtTargetState, known: Known) -> tuple[Command, ...]:
    out: list[Command] = [cmd.new_target(st.tid, st.iqn)]
    for lun in st.disk_luns:
        out.extend(_recreate_lun(st.tid, lun, known.luns.get((st.tid, lun.lun))))
    out.extend(cmd.account_binding(st.tid, u, outgoing=False, bind=True) for u in st.incoming)
    if st.outgoing:
        out.append(cmd.account_binding(st.tid, st.outgoing, outgoing=True, bind=True))
    out.extend(cmd.acl(st.tid, e, bind=True) for e in st.acl)
    return tuple(out)


def _doomed_account_deletes(desired: Desired, snap: TgtSnapshot, tid_base: int) -> list[Step]:
    return [Step(StepKind.DELETE_ACCOUNT, f"account {u} (no longer configured)", cmd.delete_account(u),
                 note="tgt never shows secrets, so a deleted account cannot be restored")
            for u in sorted(doomed_accounts(desired, snap, tid_base))]

