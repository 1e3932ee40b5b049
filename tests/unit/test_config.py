"""Configuration: the shipped example loads; each class of error is refused with key, value and fix."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from hacontrol.cli.main import main as hactl
from hacontrol.config import ConfigError, load, loads
from hacontrol.config.names import iscsi_name_error, naa_from_serial

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "hacontrol.toml"
TEXT = EXAMPLE.read_text()


def refuse(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        loads(text)
    return [str(p) for p in caught.value.problems]


def edit(old: str, new: str, count: int = 1) -> str:
    assert old in TEXT, old
    return TEXT.replace(old, new, count)


def test_the_shipped_example_is_valid_and_complete():
    cfg = load(EXAMPLE)
    assert cfg.node_names == ("ctrl-a", "ctrl-b")
    assert len(cfg.targets[0].luns) == 2 and cfg.targets[0].luns[0].naa.startswith("naa.6001405")
    assert cfg.nodes[0].fencing[0].method == "scsi_pr" and cfg.nodes[0].fencing[1].method == "ipmi"
    assert cfg.vips[0].interface_for("ctrl-b") == "eth1"
    assert cfg.zookeeper.chroot == "/hacontrol/array1"


@pytest.mark.parametrize(
    ("old", "new", "key", "words"),
    [
        # syntax and structure
        ('name = "array1"\n', 'name = "array1\n', "<syntax>", "not valid TOML"),
        ('[cluster]\nname = "array1"\n', '[cluster]\n', "cluster.name", "is required"),
        ("policy = \"first\"", "polcy = \"first\"", "fencing.polcy", "did you mean 'policy'"),
        ("garp_count = 3", 'garp_count = "3"', "network.garp_count", "whole number"),
        ('backend = "lio"', 'backend = "scst"', "cluster.backend", "use one of: lio, tgt"),
        # names
        ("iqn.2026-11.com.example:array1", "iqn.2026-11.com.Example:array1", "target[0].iqn", "lowercase"),
        ("iqn.2026-11.com.example:array1", "iqn.2026-13.com.example:array1", "target[0].iqn", "month 13"),
        ("iqn.2026-11.com.example:array1", "iqn.2026-11.example:array1", "target[0].iqn", "reversed domain"),
        ("iqn.2026-11.com.example:array1", "array1", "target[0].iqn", "must start with iqn., eui. or naa."),
        ("iqn.1998-01.com.vmware:esx01-1a2b3c4d", "iqn.1998-01.com.vmware:esx 01", "target[0].acl[0].initiator",
         "not of the form"),
        # CHAP
        ('secret = "Array1-Chap-01"', 'secret = "short"', "target[0].auth.secret", "12–16"),
        ('secret = "Array1-Chap-01"', 'secret = "this-secret-is-far-too-long"', "target[0].auth.secret", "12–16"),
        ('mutual_secret = "Esx01-Mutual-K1"', 'mutual_secret = "Esx01-Chap-Key1"',
         "target[0].acl[0].auth.mutual_secret", "equals the initiator secret"),
        ('  mutual_userid = "array1-target"\n', "", "target[0].auth.mutual_userid", "needs both"),
        # LUN identity
        ('id = 1\n  name = "ds02"', 'id = 0\n  name = "ds02"', "target[0].lun.id", "same id"),
        ('serial = "0b9d8c7e6f5a4b3c2d1e0f9a8b7c6d5e"', 'serial = "6c2f9e1a4b7d4c3e9f10a2b3c4d5e6f7"',
         "target.lun.serial", "same serial"),
        ('serial = "0b9d8c7e6f5a4b3c2d1e0f9a8b7c6d5e"', 'serial = "6c2f9e1a4b7d4c3e9f10a2b3c4d5e6f7-2"',
         "target.lun.serial", "same NAA identity"),
        ('serial = "0b9d8c7e6f5a4b3c2d1e0f9a8b7c6d5e"', 'serial = "ds02-serial"', "target[0].lun[1].serial",
         "hex digits"),
        ('device = "/dev/disk/by-id/wwn-0x5000c500a1b2c3d5"\n  serial',
         'device = "/dev/disk/by-id/wwn-0x5000c500a1b2c3d4"\n  serial', "target.lun.device", "exported twice"),
        # addresses
        ('address = "192.0.2.10/24"', 'address = "192.0.3.10/24"', "vip[0].address", "outside eth1's network"),
        ('address = "192.0.2.10/24"', 'address = "192.0.2.10"', "vip[0].address", "needs a prefix"),
        ('interface_overrides = { "ctrl-b" = "eth1" }', 'interface_overrides = { "ctrl-b" = "eth7" }', "vip[0].address",
         "has no interface 'eth7'"),
        ('interface_overrides = { "ctrl-b" = "eth1" }', 'interface_overrides = { "ctrl-x" = "eth1" }',
         "vip[0].interface_overrides.ctrl-x", "is not a controller"),
        ('address = "192.0.2.11/24"', 'address = "198.51.100.11/24"', "node[0].portal[0].address", "outside"),
        ('address = "192.0.2.11/24"', 'address = "192.0.2.10/24"', "vip/portal", "used twice"),
        # nodes
        ("id = 2\n", "id = 1\n", "node.id", "same id"),
        # zookeeper
        ('"198.51.100.3:2181"]', '"198.51.100.3:2181", "198.51.100.4:2181"]', "zookeeper.hosts", "odd number"),
        ('"198.51.100.3:2181"]', '"198.51.100.3"]', "zookeeper.hosts", "host:port"),
        ('chroot = "/hacontrol/array1"', 'chroot = "hacontrol/array1/"', "zookeeper.chroot", "absolute"),
        ('username = "hacontrol"\n', "", "zookeeper.username", "go together"),
        # timing
        ("demote_deadline_s = 1.0", "demote_deadline_s = 2.5", "timing.demote_deadline_s",
         "shorter than session_timeout_s"),
        ("watchdog_margin_s = 0.4", "watchdog_margin_s = 0.1", "timing.watchdog_margin_s", "at least"),
        ("loop_interval_s = 0.1", "loop_interval_s = 0.5", "timing.loop_interval_s", "three lease renewals"),
        ("operation_timeout_s = 0.2", "operation_timeout_s = 0.5", "timing.watchdog_margin_s", "slack is negative"),
        ("session_timeout_s = 2.0", "session_timeout_s = -2", "timing.session_timeout_s", "positive"),
    ],
)
def test_each_class_of_error_names_key_value_and_fix(old, new, key, words):
    problems = refuse(edit(old, new))
    matching = [p for p in problems if p.startswith(key)]
    assert matching, problems
    assert any(words in p for p in matching), matching
    assert all("; fix: " in p for p in problems)


def test_every_problem_is_listed_at_once():
    text = (TEXT.replace("iqn.2026-11.com.example:array1", "iqn.2026-13.com.example:array1")
            .replace('secret = "disc0very-Secr3t"', 'secret = "x"')
            .replace("demote_deadline_s = 1.0", "demote_deadline_s = 3.0")
            .replace('address = "192.0.2.10/24"', 'address = "192.0.9.10/24"'))
    problems = refuse(text)
    for key in ("target[0].iqn", "iscsi.discovery_auth.secret", "timing.demote_deadline_s", "vip[0].address"):
        assert any(p.startswith(key) for p in problems), (key, problems)


def test_secrets_never_appear_in_errors_or_reprs():
    text = TEXT.replace('secret = "Array1-Chap-01"', 'secret = "Leak1"').replace(
        'password = "zk-digest-password"', "password = 42")
    with pytest.raises(ConfigError) as caught:
        loads(text)
    message = str(caught.value)
    assert "Leak1" not in message and "***" in message
    cfg = load(EXAMPLE)
    everything = repr(cfg) + str(cfg)
    for secret in ("Array1-Chap-01", "zk-digest-password", "ipmi-secret-a", "disc0very-Secr3t", "Esx01-Mutual-K1"):
        assert secret not in everything
    assert cfg.targets[0].chap.secret.reveal() == "Array1-Chap-01"


@pytest.mark.parametrize("name", ["iqn.2026-11.com.example", "iqn.1998-01.com.vmware:esx01-1a2b3c4d",
                                  "eui.02004567A425678D", "naa.52004567BA64678D",
                                  "naa.6001405fedcba9876543210fedcba987"])
def test_accepted_iscsi_names(name):
    assert iscsi_name_error(name) is None


@pytest.mark.parametrize("name", ["eui.0200", "naa.123", "iqn.2026-11.com.example:" + "x" * 220, "iqn.1985-01.com.x",
                                  "iqn.2026-11.-com.example"])
def test_refused_iscsi_names(name):
    assert iscsi_name_error(name)


def test_naa_is_derived_from_the_serial_like_lio():
    assert naa_from_serial("6c2f9e1a-4b7d-4c3e-9f10-a2b3c4d5e6f7") == "naa.60014056c2f9e1a4b7d4c3e9f10a2b3c"
    assert naa_from_serial("ZZ12") == "naa.6001405" + "12".ljust(25, "0")


def test_hactl_config_check_exit_codes_and_json(tmp_path, capsys):
    assert hactl(["config", "check", str(EXAMPLE)]) == 0
    assert "valid" in capsys.readouterr().out
    bad = tmp_path / "bad.toml"
    bad.write_text(edit("demote_deadline_s = 1.0", "demote_deadline_s = 2.5"))
    assert hactl(["config", "check", str(bad), "--json"]) == 2
    doc = json.loads(capsys.readouterr().out)
    assert doc["valid"] is False and doc["problems"][0]["key"] == "timing.demote_deadline_s"
    assert hactl(["config", "check", str(tmp_path / "missing.toml")]) == 2
    assert re.search(r"cannot be read", capsys.readouterr().err)


def test_tgt_backend_limits_are_refused_by_config_check(tmp_path, capsys):
    f = tmp_path / "tgt.toml"
    f.write_text(TEXT.replace('backend = "lio"', 'backend = "tgt"').replace("port_takeover = true",
                                                                          "port_takeover = false"))
    assert hactl(["config", "check", str(f)]) == 2
    err = capsys.readouterr().err
    assert "tgt reserves LUN 0" in err and "cannot hide LUNs" in err


# --- the peer link -----------------------------------------------------------------------------------------

def test_the_example_has_a_two_path_peer_link():
    cfg = load(EXAMPLE)
    assert cfg.peer_link is not None and cfg.peer_link.fast_takeover and cfg.peer_link.failsafe
    assert cfg.nodes[0].peer_link == ("198.51.100.1", "192.0.2.1") and "0f3c" not in repr(cfg.peer_link)


@pytest.mark.parametrize(("old", "new", "key", "words"), [
    ('key = "0f3c9a1e5b7d2c4a6e8f0b1d3c5a7e9f"', 'key = "short"', "peer_link.key", "16–128 characters"),
    ('peer_link = ["198.51.100.2", "192.0.2.2"]', 'peer_link = ["198.51.100.2"]', "node.peer_link",
     "different number of paths"),
    ('peer_link = ["198.51.100.2", "192.0.2.2"]', 'peer_link = ["198.51.100.2", "2001:db8::2"]',
     "node.peer_link[1]", "mixes IPv4 and IPv6"),
    ('peer_link = ["198.51.100.2", "192.0.2.2"]', 'peer_link = ["198.51.100.2", "eth1"]', "node[1].peer_link",
     "not an IP address"),
    ('peer_link = ["198.51.100.2", "192.0.2.2"]', 'peer_link = ["198.51.100.1", "192.0.2.2"]', "node.peer_link",
     "listed twice"),
    ('peer_link = ["198.51.100.2", "192.0.2.2"]\n', '', "node[1].peer_link", "has no peer-link address"),
    ("peer_dead_after_s = 0.3", "peer_dead_after_s = 0.15", "timing.peer_dead_after_s", "one lost heartbeat"),
    ("heartbeat_interval_s = 0.1", "heartbeat_interval_s = 0.5\npeer_dead_after_s = 1.5",
     "timing.heartbeat_interval_s", "fewer than three heartbeats"),
])
def test_peer_link_mistakes_are_refused_with_the_key_and_the_fix(old, new, key, words):
    text = edit(old, new)
    if "peer_dead_after_s = 1.5" in new:
        text = text.replace("peer_dead_after_s = 0.3     # peer link: silent on every path this long = dead "
                            "(fast takeover)\n", "")
    problems = refuse(text)
    assert any(p.startswith(key) and words in p and "fix:" in p for p in problems), problems
    assert not any("0f3c9a1e" in p for p in problems)


def test_fast_takeover_needs_a_power_method_for_both_controllers():
    text = re.sub(r'  \[\[node\.fencing\]\]\n  method = "ipmi"\n(  [a-z_]+ = .*\n)+', "", TEXT)
    problems = refuse(text)
    assert any(p.startswith("peer_link.fast_takeover") and "power fence method" in p for p in problems), problems
    assert loads(text.replace("fast_takeover = true ", "fast_takeover = false"))


def test_addresses_without_a_peer_link_table_are_refused():
    text = re.sub(r"\[peer_link\].*?\n\n", "", TEXT, flags=re.S)
    assert any(p.startswith("peer_link") and "no [peer_link] table" in p for p in refuse(text))
