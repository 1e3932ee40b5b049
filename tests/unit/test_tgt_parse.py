"""The tgtadm/ss parsers against outputs captured from a real tgtd (tgt 1.0.85, fixtures/tgt)."""

from __future__ import annotations

from pathlib import Path

from hacontrol.adapters.tgt.adapter import connections_on
from hacontrol.adapters.tgt.snapshot import (
    TcpSocket,
    TgtConnection,
    TgtLun,
    normalize_address,
    parse_accounts,
    parse_connections,
    parse_discovery,
    parse_portals,
    parse_ss,
    parse_targets,
)

FIXTURES = Path(__file__).parent / "fixtures" / "tgt"


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


def test_targets_with_luns_accounts_acls_and_sessions():
    t1, _ = parse_targets(fixture("show_target_two.txt"))
    assert (t1.tid, t1.iqn, t1.state) == (1, "iqn.2026-11.com.example:array1", "ready")
    assert [lu.lun for lu in t1.luns] == [0, 1, 2]
    assert t1.luns[0].type == "controller" and t1.luns[0].path is None
    assert t1.lun(1) == TgtLun(lun=1, type="disk", scsi_id="60014056c2f9e1a4b7d4c3e9f10a2b3c",
                               scsi_sn="6c2f9e1a4b7d4c3e9f10a2b3c4d5e6f7", path="/tmp/tgtx/d1.img", bs_type="rdwr",
                               bs_flags="", thin=True, online=True, readonly=False, size="67 MB", block_size=512)
    assert t1.lun(2).thin is False
    assert [lu.lun for lu in t1.disk_luns] == [1, 2]
    assert t1.incoming == ("array1", "esx01")
    assert t1.outgoing == "array1-target"
    assert t1.acl == ("iqn.1998-01.com.vmware:esx01-1a2b3c4d", "iqn.2026-11.com.example:client")
    assert t1.nexuses[0].initiator == "iqn.2026-11.com.example:client"
    assert t1.nexuses[0].addresses == ("10.99.0.2",)


def test_defaults_and_flags_of_an_unconfigured_lun():
    t2 = parse_targets(fixture("show_target_two.txt"))[1]
    lun = t2.lun(1)
    assert lun.scsi_id == "IET     00020001"  # inner spaces kept: it is compared as is
    assert lun.scsi_sn == "beaf21"
    assert lun.bs_flags == "sync"
    assert t2.incoming == () and t2.outgoing is None
    assert t2.acl == ("10.99.0.0/24", "fd77::/64")


def test_empty_tgtd():
    assert parse_targets("") == ()
    assert parse_accounts("") == ()
    assert parse_portals("") == ()


def test_account_list_sorted():
    assert parse_accounts(fixture("show_account.txt")) == ("array1", "array1-target", "discovery", "esx01")


def test_discovery_accounts_from_system_show():
    assert parse_discovery(fixture("show_sys_discovery.txt")) == (("discovery",), None)
    assert parse_discovery(fixture("show_sys_discovery_mutual.txt")) == (("discovery",), "discmut")


def test_system_show_without_discovery_accounts():
    text = fixture("show_sys_discovery.txt")
    head, _, tail = text.partition("    Account information:\n")
    assert parse_discovery(head + tail[tail.index("iSNS:"):]) == ((), None)


def test_portals_ipv4_and_ipv6():
    assert parse_portals(fixture("show_portal.txt")) == (("10.99.0.1", 3260),)
    assert parse_portals("Portal: [::]:3260,1\nPortal: 0.0.0.0:3260,1\n") == (("::", 3260), ("0.0.0.0", 3260))


def test_connections():
    assert parse_connections(1, fixture("show_conn_tid1.txt")) == (
        TgtConnection(1, 1, 0, "iqn.2026-11.com.example:client", "10.99.0.2"),)


def test_ss_established():
    assert parse_ss(fixture("ss_established.txt")) == (
        TcpSocket("10.99.0.1", 3260, "10.99.0.2", 35910), TcpSocket("10.99.0.1", 3260, "10.99.0.2", 35906))
    six = "0 0 [::ffff:10.0.0.1]:3260 [::ffff:10.0.0.9]:4000\n0 0 [fd77::1]:3260 [fe80::2%eth0]:5000\n"
    assert parse_ss(six) == (TcpSocket("10.0.0.1", 3260, "10.0.0.9", 4000),
                             TcpSocket("fd77::1", 3260, "fe80::2", 5000))


def test_normalize_address():
    assert normalize_address("::ffff:192.0.2.1") == "192.0.2.1"
    assert normalize_address("FD77::0001") == "fd77::1"
    assert normalize_address("not-an-address") == "not-an-address"


def test_connections_on_one_local_address():
    vip, static = "10.77.0.200", "10.77.0.1"
    sockets = (TcpSocket(vip, 3260, "10.77.0.3", 40000), TcpSocket(static, 3260, "10.77.0.4", 40001),
               TcpSocket(vip, 22, "10.77.0.4", 40002))  # not a portal port: ignored
    conns = [TgtConnection(1, 5, 0, "iqn.x:a", "10.77.0.3"), TgtConnection(1, 6, 0, "iqn.x:b", "10.77.0.4")]
    victims, ambiguous = connections_on(vip, {3260}, sockets, conns)
    assert victims == [conns[0]] and ambiguous == set()


def test_connections_on_cuts_every_connection_of_an_ambiguous_initiator():
    vip, static = "10.77.0.200", "10.77.0.1"
    sockets = (TcpSocket(vip, 3260, "10.77.0.3", 40000), TcpSocket(static, 3260, "10.77.0.3", 40001))
    conns = [TgtConnection(1, 5, 0, "iqn.x:a", "10.77.0.3"), TgtConnection(2, 7, 0, "iqn.x:a", "10.77.0.3")]
    victims, ambiguous = connections_on(vip, {3260}, sockets, conns)
    assert victims == conns and ambiguous == {"10.77.0.3"}


def test_connections_on_nothing_there():
    sockets = (TcpSocket("10.77.0.1", 3260, "10.77.0.3", 40000),)
    conns = [TgtConnection(1, 5, 0, "iqn.x:a", "10.77.0.3")]
    assert connections_on("10.77.0.200", {3260}, sockets, conns) == ([], set())
