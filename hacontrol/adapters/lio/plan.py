"""The difference between a :class:`LioSnapshot` and the :class:`Desired` model, as ordered units of steps (pure).

Each :class:`Step` carries the :class:`Op` that does it and the ops that reverse it, so ``apply.py`` can roll
back. Steps are grouped in **units**, each leaving LIO consistent on its own (a whole LUN, a whole target
skeleton): a large apply may stop at a unit boundary when its deadline comes and continue on the next call.

Order (make before break):

1. host preconditions (PR/ALUA state directories, non-local bind for portals on addresses not held here);
2. the LU group; each target's skeleton: target, TPGs (created disabled, relative port id written while
   disabled), attributes, TPG CHAP, portals, ACLs and their CHAP;
3. one unit per LUN: storage object, identity and VAAI attributes, both ALUA groups **in their current state
   before any port exports the LUN**, the LU group, then the LUN in this controller's TPG and in the peer's,
   each in its owner's ALUA group, then the mapped LUNs of every ACL that may see it;
4. enabling this controller's TPG, only once every LUN is in place (a fresh controller never presents a
   partial LUN set: an initiator would see LOGICAL UNIT NOT SUPPORTED for a LUN it knows, which ESXi treats
   as permanent device loss);
5. discovery CHAP;
6. last, what the configuration no longer has: mapped LUNs, ACLs, LUNs, portals, TPGs, targets, storage
   objects. A failure earlier never reaches them.

Nothing here changes whether the peer's TPG is enabled: that is port takeover's business (``port.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import names
from .desired import CREATE_ONLY_ATTRS, GROUP_DEFAULTS, SO_DEFAULTS
from .model import (
    NO_AUTH,
    AclState,
    Auth,
    Desired,
    DesiredAcl,
    DesiredGroup,
    DesiredSo,
    DesiredTarget,
    DesiredTpg,
    LioSnapshot,
    SoState,
    TargetState,
    TpgState,
)


@dataclass(frozen=True)
class Op:
    """One change to LIO. ``args`` may hold Secrets (inside :class:`Auth`): their str and repr are ``***``."""

    kind: str
    args: tuple[object, ...] = ()

    def __str__(self) -> str:
        return " ".join([self.kind, *(str(a) if not isinstance(a, Auth) else _auth_text(a) for a in self.args)])


def _auth_text(a: Auth) -> str:
    if a.empty:
        return "auth(none)"
    mutual = f", mutual {a.mutual_userid}/***" if a.mutual_userid else ""
    return f"auth({a.userid or '-'}/***{mutual})"


@dataclass(frozen=True)
class Step:
    do: Op
    undo: tuple[Op, ...] = ()
    note: str = ""  # what a rollback of this step cannot restore

    def __str__(self) -> str:
        return str(self.do)


@dataclass(frozen=True)
class Unit:
    name: str
    steps: tuple[Step, ...] = field(default_factory=tuple)


def plan(desired: Desired, snap: LioSnapshot, alua: tuple[int, int]) -> list[Unit]:
    """The units that turn ``snap`` into ``desired``; ``alua`` = (own, peer) states for groups set here."""
    units = [_host(desired, snap), _lu_group(snap)]
    units += [_skeleton(dt, snap.targets.get(dt.iqn)) for dt in desired.targets]
    replaced = {d.name for d in desired.storage if _replaced(d, snap.storage.get(d.name))}
    for d in desired.storage:
        units.append(_lun_unit(desired, d, snap, alua, replaced))
    units.append(Unit("enable ports", tuple(_enable_steps(desired, snap))))
    units.append(Unit("discovery", tuple(_discovery_steps(desired, snap))))
    units.append(Unit("removals", tuple(_removals(desired, snap, replaced))))
    return [u for u in units if u.steps]


def step_count(units: list[Unit]) -> int:
    return sum(len(u.steps) for u in units)


# --- host, LU group, skeleton ------------------------------------------------------------------------------

def _host(desired: Desired, snap: LioSnapshot) -> Unit:
    steps = []
    if not snap.host.state_dirs:
        steps.append(Step(Op("state_dirs", (snap.host.dbroot,))))
    if desired.nonlocal_bind and not snap.host.nonlocal_bind:
        steps.append(Step(Op("nonlocal_bind")))
    return Unit("host", tuple(steps))


def lu_group_id(snap: LioSnapshot) -> int:
    if names.LU_GROUP in snap.lu_groups:
        return snap.lu_groups[names.LU_GROUP]
    used = set(snap.lu_groups.values())
    return next(i for i in range(1, 0x10000) if i not in used)


def _lu_group(snap: LioSnapshot) -> Unit:
    if names.LU_GROUP in snap.lu_groups:
        return Unit("lu group")
    gid = lu_group_id(snap)
    return Unit("lu group", (Step(Op("create_lu_group", (names.LU_GROUP, gid)),
                                  (Op("delete_lu_group", (names.LU_GROUP,)),)),))


def _set(kind: str, key: tuple[object, ...], want: object, have: object, created: bool, *,
         default: object = None) -> list[Step]:
    """A setter step when ``want`` differs from ``have``, or on a just-created object from its kernel
    ``default`` (None: unknown, always written)."""
    if (not created and want == have) or (created and default is not None and want == default):
        return []
    undo = () if created else (Op(kind, (*key, have)),)
    return [Step(Op(kind, (*key, want)), undo)]


def _skeleton(dt: DesiredTarget, st: TargetState | None) -> Unit:
    steps: list[Step] = []
    if st is None:
        steps.append(Step(Op("create_target", (dt.iqn,)), (Op("delete_target", (dt.iqn,)),)))
    for want in dt.tpgs:
        steps.extend(_tpg_skeleton(dt.iqn, want, st.tpgs.get(want.tag) if st else None))
    return Unit(f"target {dt.iqn}", tuple(steps))


def _tpg_skeleton(iqn: str, want: DesiredTpg, have: TpgState | None) -> list[Step]:
    key = (iqn, want.tag)
    created = have is None
    steps: list[Step] = []
    if created:
        steps.append(Step(Op("create_tpg", key), (Op("delete_tpg", key),)))
    steps += _rtpi_steps(key, want, have)
    for attr, value in want.attrs.items():
        steps += _set("set_tpg_attr", (*key, attr), value, None if have is None else have.attrs.get(attr), created)
    if created or want.auth != have.auth:  # type: ignore[union-attr]
        steps += _set("set_tpg_auth", key, want.auth, NO_AUTH if have is None else have.auth, created)
    have_portals = frozenset() if have is None else have.portals
    steps += [Step(Op("create_portal", (*key, np)), (Op("delete_portal", (*key, np)),))
              for np in want.portals if np not in have_portals]
    for acl in want.acls:
        steps.extend(_acl_skeleton(key, acl, None if have is None else have.acls.get(acl.initiator)))
    return steps


def _rtpi_steps(key: tuple[str, int], want: DesiredTpg, have: TpgState | None) -> list[Step]:
    if want.rtpi is None or (have is not None and have.rtpi == want.rtpi):
        return []
    if have is None or not have.enabled:
        return _set("set_tpg_rtpi", key, want.rtpi, None if have is None else have.rtpi, have is None)
    # The kernel refuses a new relative port id on an enabled TPG: its sessions drop and log in again.
    return [Step(Op("set_tpg_enable", (*key, False)), (Op("set_tpg_enable", (*key, True)),),
                 note="sessions on this TPG were dropped to change its relative port id"),
            Step(Op("set_tpg_rtpi", (*key, want.rtpi)), (Op("set_tpg_rtpi", (*key, have.rtpi)),)),
            Step(Op("set_tpg_enable", (*key, True)), (Op("set_tpg_enable", (*key, False)),))]


def _acl_skeleton(key: tuple[str, int], want: DesiredAcl, have: AclState | None) -> list[Step]:
    akey = (*key, want.initiator)
    steps: list[Step] = []
    if have is None:
        steps.append(Step(Op("create_acl", akey), (Op("delete_acl", akey),)))
    have_auth = NO_AUTH if have is None else have.auth
    if want.auth != have_auth:  # a new ACL has no credentials: set only if some are wanted
        steps += _set("set_acl_auth", akey, want.auth, have_auth, False)
    steps += _set("set_acl_attr", (*akey, "authentication"), want.authentication,
                  None if have is None else have.authentication, have is None)
    return steps


# --- one LUN ---------------------------------------------------------------------------------------------

def _replaced(d: DesiredSo, have: SoState | None) -> bool:
    """Another device or another identity under the same name is another disk: it must be recreated."""
    return have is not None and (have.udev_path != d.device or have.serial != d.serial)


def _lun_unit(desired: Desired, d: DesiredSo, snap: LioSnapshot, alua: tuple[int, int],
              replaced: set[str]) -> Unit:
    have = None if d.name in replaced else snap.storage.get(d.name)
    steps: list[Step] = []
    if d.name in replaced:
        steps += _so_removal(snap, snap.storage[d.name], desired_targets(desired))
    steps += _so_steps(desired, d, have, alua)
    for dt in desired.targets:
        st = snap.targets.get(dt.iqn)
        for want in dt.tpgs:
            have_tpg = st.tpgs.get(want.tag) if st else None
            steps += _tpg_lun_steps(dt.iqn, want, have_tpg, d.name, fresh=d.name in replaced)
    return Unit(f"lun {d.lun_name or d.name}", tuple(steps))


def desired_targets(desired: Desired) -> set[str]:
    return {dt.iqn for dt in desired.targets}


def _so_steps(desired: Desired, d: DesiredSo, have: SoState | None, alua: tuple[int, int]) -> list[Step]:
    created = have is None
    steps: list[Step] = []
    if created:
        steps.append(Step(Op("create_so", (d.name, d.device, d.serial)), (Op("delete_so", (d.name,)),)))
    for attr, value in d.attrs.items():
        if attr in CREATE_ONLY_ATTRS and not created:
            continue
        steps += _set("set_so_attr", (d.name, attr), value, None if have is None else have.attrs.get(attr), created,
                      default=SO_DEFAULTS.get(attr))
    # Groups are created in id order on both controllers: LIO lists them in creation order, so REPORT TARGET
    # PORT GROUPS is then byte-identical from either side.
    for group, state in sorted(zip(desired.groups, alua, strict=True), key=lambda pair: pair[0].id):
        steps += _group_steps(d.name, group, state, None if have is None else have, created)
    if created or have.lu_group != names.LU_GROUP:  # type: ignore[union-attr]
        old = "default_lu_gp" if have is None else have.lu_group
        # After the states: a write to a member of the LU group would switch every member.
        steps.append(Step(Op("set_lu_group", (d.name, names.LU_GROUP)), (Op("set_lu_group", (d.name, old)),)))
    return steps


def _group_steps(so: str, want: DesiredGroup, state: int, have_so: SoState | None, so_created: bool) -> list[Step]:
    have = None if have_so is None else have_so.groups.get(want.name)
    created = have is None
    steps: list[Step] = []
    if created:
        undo = () if so_created else (Op("delete_group", (so, want.name)),)
        steps.append(Step(Op("create_group", (so, want.name, want.id)), undo))
    for attr, value in want.attrs.items():
        steps += _set("set_group_attr", (so, want.name, attr), value,
                      None if have is None else have.attrs.get(attr), created, default=GROUP_DEFAULTS.get(attr))
    if created or have.state != state:  # type: ignore[union-attr]
        undo = () if created else (Op("set_group_state", (so, want.name, have.state)),)  # type: ignore[union-attr]
        steps.append(Step(Op("set_group_state", (so, want.name, state)), undo))
    return steps


def _tpg_lun_steps(iqn: str, want: DesiredTpg, have: TpgState | None, so: str, fresh: bool) -> list[Step]:
    steps: list[Step] = []
    key = (iqn, want.tag)
    for lun_id, so_name, group in want.luns:
        if so_name != so:
            continue
        lun = None if have is None or fresh else have.luns.get(lun_id)
        if lun is not None and lun.so_key.rpartition("/")[2] != so:
            steps.append(_delete_lun(key, lun_id, lun.so_key.rpartition("/")[2], lun.group))
            lun = None
        if lun is None:
            steps.append(Step(Op("create_lun", (*key, lun_id, so)), (Op("delete_lun", (*key, lun_id)),)))
        if lun is None or lun.group != group:
            old = "default_tg_pt_gp" if lun is None else lun.group
            undo = () if lun is None else (Op("set_lun_group", (*key, lun_id, old)),)
            steps.append(Step(Op("set_lun_group", (*key, lun_id, group)), undo))
        for acl in want.acls:
            if lun_id not in acl.mapped:
                continue
            have_acl = None if have is None else have.acls.get(acl.initiator)
            mapped = None if have_acl is None or lun is None else have_acl.mapped.get(lun_id)
            if mapped is not None and mapped.tpg_lun == lun_id:
                continue
            akey = (*key, acl.initiator, lun_id)
            if mapped is not None:
                steps.append(Step(Op("delete_mapped_lun", akey), (Op("create_mapped_lun", (*akey, mapped.tpg_lun)),)))
            steps.append(Step(Op("create_mapped_lun", (*akey, lun_id)), (Op("delete_mapped_lun", akey),)))
    return steps


def _delete_lun(key: tuple[str, int], lun_id: int, so: str, group: str) -> Step:
    return Step(Op("delete_lun", (*key, lun_id)),
                (Op("create_lun", (*key, lun_id, so)), Op("set_lun_group", (*key, lun_id, group))),
                note="mapped LUNs of this LUN are not restored")


# --- enable, discovery --------------------------------------------------------------------------------------

def _enable_steps(desired: Desired, snap: LioSnapshot) -> list[Step]:
    steps = []
    for dt in desired.targets:
        st = snap.targets.get(dt.iqn)
        for want in dt.tpgs:
            if want.enabled is None:
                continue
            have = st.tpgs.get(want.tag) if st else None
            enabled = have is not None and have.enabled
            if enabled != want.enabled:
                key = (dt.iqn, want.tag)
                steps.append(Step(Op("set_tpg_enable", (*key, want.enabled)),
                                  (Op("set_tpg_enable", (*key, enabled)),)))
    return steps


def _discovery_steps(desired: Desired, snap: LioSnapshot) -> list[Step]:
    enforce = not desired.discovery.empty
    steps = []
    if desired.discovery != snap.discovery_auth and (enforce or not snap.discovery_auth.empty):
        steps.append(Step(Op("set_discovery_auth", (desired.discovery,)),
                          (Op("set_discovery_auth", (snap.discovery_auth,)),)))
    if enforce != snap.discovery_enforce:
        steps.append(Step(Op("set_discovery_enforce", (enforce,)),
                          (Op("set_discovery_enforce", (snap.discovery_enforce,)),)))
    # Credentials before enforcement when turning on; enforcement off before clearing them when turning off.
    return steps if enforce else list(reversed(steps))


# --- removals -----------------------------------------------------------------------------------------------

def owned_target(st: TargetState) -> bool:
    """A target not in the configuration is ours if every LUN it exports is a hacontrol backstore."""
    keys = [lun.so_key for tpg in st.tpgs.values() for lun in tpg.luns.values()]
    return bool(keys) and all(names.owned_so(k.rpartition("/")[2]) for k in keys)


def _removals(desired: Desired, snap: LioSnapshot, replaced: set[str]) -> list[Step]:
    steps: list[Step] = []
    wanted = {dt.iqn: dt for dt in desired.targets}
    for iqn, st in sorted(snap.targets.items()):
        dt = wanted.get(iqn)
        if dt is None:
            if owned_target(st):
                steps.append(Step(Op("delete_target", (iqn,)), note="a deleted target is not recreated by rollback"))
            continue
        for tag, tpg in sorted(st.tpgs.items()):
            want = next((t for t in dt.tpgs if t.tag == tag), None)
            steps += _tpg_removals(iqn, tpg, want, replaced)
    desired_sos = {d.name for d in desired.storage}
    in_use = _foreign_users(snap, desired_targets(desired))
    for name, so in sorted(snap.storage.items()):
        if names.owned_so(name) and name not in desired_sos and name not in in_use:
            steps.append(Step(Op("delete_so", (name,)),
                              (Op("create_so", (name, so.udev_path, so.serial)),),
                              note=f"{name}: persistent reservations and ALUA groups are not restored"))
    return steps


def _foreign_users(snap: LioSnapshot, ours: set[str]) -> set[str]:
    """Storage objects exported by targets the adapter does not manage (never deleted under them)."""
    return {lun.so_key.rpartition("/")[2] for iqn, st in snap.targets.items() if iqn not in ours
            and not owned_target(st) for tpg in st.tpgs.values() for lun in tpg.luns.values()}


def _tpg_removals(iqn: str, tpg: TpgState, want: DesiredTpg | None, replaced: set[str]) -> list[Step]:
    key = (iqn, tpg.tag)
    if want is None:
        return [Step(Op("delete_tpg", key), note=f"TPG {tpg.tag} of {iqn} is not recreated by rollback")]
    steps: list[Step] = []
    acls = {a.initiator: a for a in want.acls}
    luns = {lun_id: so for lun_id, so, _ in want.luns}
    for ini, acl in sorted(tpg.acls.items()):
        if ini not in acls:
            steps.append(Step(Op("delete_acl", (*key, ini)), (Op("create_acl", (*key, ini)),),
                              note=f"ACL {ini}: CHAP and mapped LUNs are not restored"))
            continue
        for mid, mapped in sorted(acl.mapped.items()):
            if mid not in acls[ini].mapped or mid not in luns:
                steps.append(Step(Op("delete_mapped_lun", (*key, ini, mid)),
                                  (Op("create_mapped_lun", (*key, ini, mid, mapped.tpg_lun)),)))
    for lun_id, lun in sorted(tpg.luns.items()):
        so = lun.so_key.rpartition("/")[2]
        if lun_id not in luns and so not in replaced:
            steps.append(_delete_lun(key, lun_id, so, lun.group))
    steps += [Step(Op("delete_portal", (*key, np)), (Op("create_portal", (*key, np)),))
              for np in sorted(tpg.portals) if np not in want.portals]
    return steps


def _so_removal(snap: LioSnapshot, so: SoState, ours: set[str]) -> list[Step]:
    """Unexport and delete a storage object whose device or identity changed (its LUNs are re-added after)."""
    steps: list[Step] = []
    for iqn, st in sorted(snap.targets.items()):
        if iqn not in ours:
            continue
        for tag, tpg in sorted(st.tpgs.items()):
            for lun_id, lun in sorted(tpg.luns.items()):
                if lun.so_key.rpartition("/")[2] == so.name:
                    steps.append(_delete_lun((iqn, tag), lun_id, so.name, lun.group))
    steps.append(Step(Op("delete_so", (so.name,)), (Op("create_so", (so.name, so.udev_path, so.serial)),),
                      note=f"{so.name}: replaced backstore; the old one's PR state is not restored"))
    return steps
