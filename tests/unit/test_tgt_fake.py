"""An in-memory tgtd speaking tgtadm (tgt 1.0.85 semantics, bugs included), and tests that keep it honest.

The fake answers ``--op show`` in tgt's own format, so the plan tests run the
real parser, and it reproduces the account-array hole of tgt 1.0.85: unbinding
an incoming account that is not the last one leaves a zero in the array and the
next show dies (``tgtadm: tgtd closed the socket``). Its outputs are compared
with the captured real ones in ``fixtures/tgt``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from hacontrol.adapters.tgt.snapshot import parse_accounts, parse_discovery, parse_targets
from hacontrol.adapters.tgt.tgtadm import Command, Tgtadm, TgtadmError, TgtdUnreachable

FIXTURES = Path(__file__).parent / "fixtures" / "tgt"
T1, T2, T3 = "    ", "        ", "            "


@dataclass
class Slots:
    """tgt's per-target account arrays: ``in_aids`` with holes, ``nr`` in use, one outgoing aid."""

    in_aids: list[int] = field(default_factory=lambda: [0] * 16)
    nr: int = 0
    out: int = 0

    def bind(self, aid: int, outgoing: bool) -> str | None:
        if outgoing:
            if self.out:
                return "this target already has an outgoing account"
            self.out = aid
            return None
        if aid in self.in_aids:
            return "this account already exists"
        if self.nr < len(self.in_aids):
            self.in_aids[self.in_aids.index(0)] = aid
        else:
            self.in_aids.extend([aid] + [0] * (len(self.in_aids) - 1))
        self.nr += 1
        return None

    def unbind(self, aid: int, outgoing: bool) -> str | None:
        if outgoing:
            if self.out != aid:
                return "can't find the account"
            self.out = 0
            return None
        if aid not in self.in_aids:
            return "can't find the account"
        self.in_aids[self.in_aids.index(aid)] = 0  # no compaction: the 1.0.85 hole
        self.nr -= 1
        return None

    def listed(self) -> list[int] | None:
        """What show iterates: in_aids[0:nr]; None when it would dereference a hole (tgtd crashes)."""
        shown = self.in_aids[: self.nr]
        return None if 0 in shown else shown


@dataclass
class FakeLun:
    path: str | None
    type: str = "disk"
    scsi_id: str = ""
    scsi_sn: str = ""
    thin: bool = False
    online: bool = True
    params: dict[str, str] = field(default_factory=dict)  # what tgtadm accepts but never shows


@dataclass
class FakeTarget:
    tid: int
    iqn: str
    state: str = "ready"
    luns: dict[int, FakeLun] = field(default_factory=dict)
    slots: Slots = field(default_factory=Slots)
    addresses: list[str] = field(default_factory=list)
    names: list[str] = field(default_factory=list)


class FakeTgtd:
    def __init__(self, portals: tuple[tuple[str, int], ...] = (("10.77.0.1", 3260),)):
        self.targets: dict[int, FakeTarget] = {}
        self.accounts: list[tuple[str, int, str]] = []  # (user, aid, password), newest first like tgt's list_add
        self.discovery = Slots()
        self.portals = portals
        self.crashed = False

    def aid(self, user: str) -> int | None:
        return next((a for u, a, _ in self.accounts if u == user), None)

    def user(self, aid: int) -> str:
        return next(u for u, a, _ in self.accounts if a == aid)

    def password(self, user: str) -> str | None:
        return next((p for u, _, p in self.accounts if u == user), None)

    # -- show ---------------------------------------------------------------------------------------------
    def show_targets(self) -> str:
        out = []
        for t in sorted(self.targets.values(), key=lambda x: x.tid):  # tgt keeps targets sorted by tid
            out += [f"Target {t.tid}: {t.iqn}", f"{T1}System information:", f"{T2}Driver: iscsi",
                    f"{T2}State: {t.state}", f"{T1}I_T nexus information:", f"{T1}LUN information:"]
            for n in sorted(t.luns):
                out += self._lun_lines(t.tid, n, t.luns[n])
            out.append(f"{T1}Account information:")
            listed = t.slots.listed()
            if listed is None:
                self.crashed = True
                return ""
            out += [f"{T2}{self.user(a)}" for a in listed]
            if t.slots.out:
                out.append(f"{T2}{self.user(t.slots.out)} (outgoing)")
            out.append(f"{T1}ACL information:")
            out += [f"{T2}{e}" for e in t.addresses + t.names]
        return "".join(line + "\n" for line in out)

    @staticmethod
    def _lun_lines(tid: int, n: int, lun: FakeLun) -> list[str]:
        controller = lun.type == "controller"
        return [f"{T2}LUN: {n}", f"{T3}Type: {lun.type}", f"{T3}SCSI ID: {lun.scsi_id}", f"{T3}SCSI SN: {lun.scsi_sn}",
                f"{T3}Size: {'0 MB, Block size: 1' if controller else '67 MB, Block size: 512'}",
                f"{T3}Online: {'Yes' if lun.online else 'No'}", f"{T3}Removable media: No",
                f"{T3}Prevent removal: No", f"{T3}Readonly: No", f"{T3}SWP: No",
                f"{T3}Thin-provisioning: {'Yes' if lun.thin else 'No'}",
                f"{T3}Backing store type: {'null' if controller else 'rdwr'}",
                f"{T3}Backing store path: {lun.path or 'None'}", f"{T3}Backing store flags: "]

    def show_accounts(self) -> str:
        if not self.accounts:
            return ""
        return "Account list:\n" + "".join(f"{T1}{u}\n" for u, _, _ in self.accounts)

    def show_system(self) -> str:
        text = (FIXTURES / "show_sys_discovery.txt").read_text()
        head, _, tail = text.partition(f"{T1}Account information:\n")
        tail = tail[tail.index("iSNS:"):]
        listed = self.discovery.listed()
        if listed is None:
            self.crashed = True
            return ""
        if not listed:
            return head + tail
        accounts = "".join(f"{T1}{self.user(a)}\n" for a in listed)
        if self.discovery.out:
            accounts += f"{T1}{self.user(self.discovery.out)} (outgoing)\n"
        return head + f"{T1}Account information:\n\n" + accounts + tail

    def show_portals(self) -> str:
        return "".join(f"Portal: {a}:{p},1\n" for a, p in self.portals)

    # -- tgtadm -------------------------------------------------------------------------------------------
    def handle(self, command: Command) -> str:
        """Run one command; returns stdout or raises ValueError(tgtadm's message)."""
        opts = _options(command.args)
        mode, op = opts["--mode"], opts["--op"]
        if op == "show":
            return {"target": self.show_targets, "account": self.show_accounts, "sys": self.show_system,
                    "portal": self.show_portals}[mode]()
        handler = getattr(self, f"_{mode}_{op}")
        error = handler(opts, command)
        if error:
            raise ValueError(error)
        return ""

    def _target(self, opts: dict[str, str]) -> FakeTarget:
        t = self.targets.get(int(opts["--tid"]))
        if t is None:
            raise ValueError("can't find the target")
        return t

    def _target_new(self, opts: dict[str, str], _c: Command) -> str | None:
        tid = int(opts["--tid"])
        if tid in self.targets or any(t.iqn == opts["--targetname"] for t in self.targets.values()):
            return "this target already exists"
        self.targets[tid] = FakeTarget(tid, opts["--targetname"],
                                       luns={0: FakeLun(None, "controller", f"IET     {tid:04x}0000", f"beaf{tid}0")})
        return None

    def _target_delete(self, opts: dict[str, str], _c: Command) -> str | None:
        self._target(opts)
        del self.targets[int(opts["--tid"])]
        return None

    def _target_update(self, opts: dict[str, str], _c: Command) -> str | None:
        self._target(opts).state = opts["--value"]
        return None

    def _target_bind(self, opts: dict[str, str], _c: Command, bind: bool = True) -> str | None:
        t = self._target(opts)
        entries, value = ((t.addresses, opts["--initiator-address"]) if "--initiator-address" in opts
                          else (t.names, opts["--initiator-name"]))
        if bind == (value in entries):
            return "this access control rule already exists" if bind else "this access control rule does not exist"
        (entries.append if bind else entries.remove)(value)
        return None

    def _target_unbind(self, opts: dict[str, str], c: Command) -> str | None:
        return self._target_bind(opts, c, bind=False)

    def _logicalunit_new(self, opts: dict[str, str], _c: Command) -> str | None:
        t, n = self._target(opts), int(opts["--lun"])
        if n in t.luns:
            return "this logical unit number already exists"
        t.luns[n] = FakeLun(opts.get("--backing-store"), scsi_id=f"IET     {t.tid:04x}{n:04x}",
                            scsi_sn=f"beaf{t.tid}{n}")
        return None

    def _logicalunit_update(self, opts: dict[str, str], _c: Command) -> str | None:
        lun = self._target(opts).luns.get(int(opts["--lun"]))
        if lun is None:
            return "can't find the logical unit"
        for param in opts["--params"].split(","):
            key, _, value = param.partition("=")
            if key == "scsi_id":
                lun.scsi_id = value
            elif key == "scsi_sn":
                lun.scsi_sn = value
            elif key == "thin_provisioning":
                lun.thin = value == "1"
            elif key == "online":
                lun.online = value == "1"
            elif key in ("vendor_id", "product_id", "mode_page"):
                lun.params[key] = value
            else:
                return "invalid request"
        return None

    def _logicalunit_delete(self, opts: dict[str, str], _c: Command) -> str | None:
        t, n = self._target(opts), int(opts["--lun"])
        if n == 0:
            return "invalid request"
        if n not in t.luns:
            return "can't find the logical unit"
        del t.luns[n]
        return None

    def _account_new(self, opts: dict[str, str], c: Command) -> str | None:
        if self.aid(opts["--user"]) is not None:
            return "this account already exists"
        aid = next(i for i in range(1, 10_000) if all(a != i for _, a, _ in self.accounts))
        self.accounts.insert(0, (opts["--user"], aid, c.password.reveal() if c.password else ""))
        return None

    def _account_delete(self, opts: dict[str, str], _c: Command) -> str | None:
        aid = self.aid(opts["--user"])
        if aid is None:
            return "can't find the account"
        for slots in [t.slots for t in self.targets.values()] + [self.discovery]:
            slots.unbind(aid, outgoing=False)  # holes, exactly like account_del -> account_ctl
            slots.unbind(aid, outgoing=True)
        self.accounts = [x for x in self.accounts if x[1] != aid]
        return None

    def _account_bind(self, opts: dict[str, str], _c: Command, bind: bool = True) -> str | None:
        aid = self.aid(opts["--user"])
        slots = self._target(opts).slots if "--tid" in opts else self.discovery
        if aid is None:
            return "can't find the account"
        outgoing = "--outgoing" in opts
        return slots.bind(aid, outgoing) if bind else slots.unbind(aid, outgoing)

    def _account_unbind(self, opts: dict[str, str], c: Command) -> str | None:
        return self._account_bind(opts, c, bind=False)


def _options(args: tuple[str, ...]) -> dict[str, str]:
    opts: dict[str, str] = {}
    i = 0
    while i < len(args):
        value = args[i + 1] if i + 1 < len(args) and not args[i + 1].startswith("--") else ""
        opts[args[i]] = value
        i += 2 if value else 1
    return opts


class FakeRunner(Tgtadm):
    """A Tgtadm that talks to a FakeTgtd; ``fail_at`` makes the Nth mutating command fail (1-based)."""

    def __init__(self, fake: FakeTgtd, fail_at: int | None = None):
        super().__init__(control_port=1, timeout_s=1.0)
        self.fake = fake
        self.fail_at = fail_at
        self.log: list[Command] = []

    def run(self, command: Command, deadline: float | None = None) -> str:
        self.log.append(command)
        if command.mutating:
            self.mutations += 1
        if self.fake.crashed:
            raise TgtdUnreachable(command, "failed to send request hdr to tgt daemon", 107)
        if command.mutating and self.fail_at is not None and self.mutations == self.fail_at:
            raise TgtadmError(command, "injected failure", 22)
        try:
            out = self.fake.handle(command)
        except ValueError as exc:
            raise TgtadmError(command, str(exc), 22) from None
        if self.fake.crashed:
            raise TgtdUnreachable(command, "tgtd closed the connection: it probably crashed", 0)
        return out


# -- the fake against real tgt output ---------------------------------------------------------------------


def _fixture_state() -> FakeTgtd:
    """The state captured in show_target_two.txt, rebuilt through the fake's own commands."""
    fake = FakeTgtd()
    run = FakeRunner(fake).run
    from hacontrol.adapters.tgt import commands as cmd
    from hacontrol.config.schema import Secret

    for user in ("esx01", "array1", "array1-target", "discovery"):
        run(cmd.new_account(user, Secret("x" * 12)))
    run(cmd.new_target(1, "iqn.2026-11.com.example:array1"))
    run(cmd.new_lun(1, 1, "/tmp/tgtx/d1.img"))
    run(cmd.update_lun(1, 1, ("scsi_id=60014056c2f9e1a4b7d4c3e9f10a2b3c", "scsi_sn=6c2f9e1a4b7d4c3e9f10a2b3c4d5e6f7",
                              "thin_provisioning=1")))
    run(cmd.new_lun(1, 2, "/tmp/tgtx/d2.img"))
    run(cmd.update_lun(1, 2, ("scsi_id=60014050b9d8c7e6f5a4b3c2d1e0f9a", "scsi_sn=0b9d8c7e6f5a4b3c2d1e0f9a8b7c6d5e")))
    for user, outgoing in (("array1", False), ("esx01", False), ("array1-target", True)):
        run(cmd.account_binding(1, user, outgoing, bind=True))
    run(cmd.acl(1, "iqn.1998-01.com.vmware:esx01-1a2b3c4d", bind=True))
    run(cmd.acl(1, "iqn.2026-11.com.example:client", bind=True))
    run(cmd.account_binding(None, "discovery", False, bind=True))
    return fake


def test_fake_show_parses_like_the_real_capture():
    real = parse_targets((FIXTURES / "show_target_two.txt").read_text())[0]
    fake = parse_targets(_fixture_state().show_targets())[0]
    assert fake.luns == real.luns
    assert (fake.tid, fake.iqn, fake.incoming, fake.outgoing, fake.acl) == \
        (real.tid, real.iqn, real.incoming, real.outgoing, real.acl)


def test_fake_lists_accounts_and_discovery_like_tgt():
    fake = _fixture_state()
    assert parse_accounts(fake.show_accounts()) == ("array1", "array1-target", "discovery", "esx01")
    assert parse_discovery(fake.show_system()) == parse_discovery((FIXTURES / "show_sys_discovery.txt").read_text())


def test_fake_reproduces_the_unbind_hole_crash():
    """tgt 1.0.85, measured: unbind the first of two incoming accounts, then show -> tgtd dies."""
    fake = _fixture_state()
    runner = FakeRunner(fake)
    from hacontrol.adapters.tgt import commands as cmd

    runner.run(cmd.account_binding(1, "array1", outgoing=False, bind=False))
    try:
        runner.run(cmd.show_targets())
    except TgtdUnreachable:
        pass
    else:
        raise AssertionError("the fake should have crashed like tgtd")
    assert fake.crashed


# -- configuration builder (shared with tests/integration/test_tgt.py) ------------------------------------

_HEAD = """
[cluster]
name = "lab"
backend = "{backend}"
port_takeover = false

[[node]]
name = "ctrl-a"
id = 1
  [[node.interface]]
  name = "eth0"
  address = "10.77.0.1/24"

[[node]]
name = "ctrl-b"
id = 2
  [[node.interface]]
  name = "eth0"
  address = "10.77.0.2/24"

[zookeeper]
hosts = ["127.0.0.1:2181"]
"""


def _value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _scalars(d: dict) -> list[str]:
    return [f"{k} = {_value(v)}" for k, v in d.items()
            if v is not None and not isinstance(v, dict) and k not in ("lun", "acl")]


def config_text(targets: list[dict], discovery: dict | None = None, backend: str = "tgt") -> str:
    """TOML for a two-node lab cluster; each target dict mirrors [[target]] (auth, lun, acl keys nest)."""
    out = [_HEAD.format(backend=backend)]
    if discovery:
        out += ["[iscsi.discovery_auth]", *_scalars(discovery), ""]
    for t in targets:
        out += ["[[target]]", *_scalars(t)]
        if t.get("auth"):
            out += ["[target.auth]", *_scalars(t["auth"])]
        for lun in t.get("lun", []):
            out += ["[[target.lun]]", *_scalars(lun)]
            if lun.get("vaai"):
                out += ["[target.lun.vaai]", *_scalars(lun["vaai"])]
        for acl in t.get("acl", []):
            out += ["[[target.acl]]", *_scalars(acl)]
            if acl.get("auth"):
                out += ["[target.acl.auth]", *_scalars(acl["auth"])]
        out.append("")
    return "\n".join(out)


def chap(user: str, secret: str, mutual_user: str | None = None, mutual_secret: str | None = None) -> dict:
    block = {"userid": user, "secret": secret}
    if mutual_user:
        block |= {"mutual_userid": mutual_user, "mutual_secret": mutual_secret}
    return block


def lun(lun_id: int, device: str, serial: str, **kw: object) -> dict:
    return {"id": lun_id, "name": f"lun{lun_id}", "device": device, "serial": serial,
            "vaai": {"ats": False, "xcopy": False}, **kw}
