"""allowed_networks as nftables rules: the rendered ruleset, and (as root, in a private network namespace) the
real libnftables: applied in one transaction, unchanged configurations touch nothing, removal deletes the table."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from hacontrol.adapters.lio import nft
from hacontrol.adapters.lio.desired import problems
from tests.unit.test_lio_fake import lio_config
from tests.unit.test_lio_port import make


def test_rules_cover_every_portal_this_controller_may_listen_on(lio, devices):
    (rule,) = make(lio, lio_config(devices)).nft_rules()
    assert rule.port == 3260 and rule.allowed == ("192.0.2.0/24",)
    assert rule.portals == ("192.0.2.10", "192.0.2.11", "192.0.2.12")  # VIP, own portal, the peer's


def test_render_rejects_other_sources_with_a_reset_per_family():
    rules = nft.filters({3260: ["192.0.2.11", "2001:db8::11"]}, {3260: ["192.0.2.0/24", "198.51.100.7/32"]})
    text = nft.render(rules)
    assert text.startswith(f"add table inet {nft.TABLE}\ndelete table inet {nft.TABLE}\n")
    assert "elements = { 192.0.2.0/24, 198.51.100.7/32 }" in text
    assert "tcp dport 3260 ip daddr @portals4_3260 ip saddr != @allowed4_3260 reject with tcp reset" in text
    # No IPv6 network is allowed: every IPv6 source is refused (an empty set matches nothing).
    assert "set allowed6_3260 { type ipv6_addr; flags interval; }" in text
    assert f'comment "hacontrol {nft.digest(rules)}"' in text


def test_ports_without_networks_are_left_open_and_no_rules_deletes_the_table():
    assert nft.filters({3260: ["192.0.2.11"]}, {3260: []}) == ()
    assert nft.render(()) == f"add table inet {nft.TABLE}\ndelete table inet {nft.TABLE}\n"


def test_targets_sharing_a_port_must_allow_the_same_networks(devices):
    cfg = lio_config(devices, extra_targets=[{"iqn": "iqn.2026-11.com.example:b", "allowed_networks": ["10.9.0.0/16"]}])
    assert any(p.key == "target.allowed_networks" for p in problems(cfg, "ctrl-a"))


def _can_run_nft() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    if shutil.which("unshare") is None:
        return "needs unshare"
    try:
        nft.Nftables()
    except nft.NftError as exc:
        return str(exc)
    return None


SCRIPT = """
from hacontrol.adapters.lio import nft
n = nft.Nftables()
rules = nft.filters({3260: ["192.0.2.11"]}, {3260: ["192.0.2.0/24"]})
assert n.current() == (None, "")
changed, undo = n.replace(rules)
assert changed and undo.startswith("add table")
assert n.current()[0] == nft.digest(rules)
assert n.replace(rules) == (False, "")
wider = nft.filters({3260: ["192.0.2.11"]}, {3260: ["192.0.2.0/24", "10.0.0.0/8"]})
changed, undo = n.replace(wider)
assert changed and "192.0.2.0/24" in undo
n.run(undo)
assert n.current()[0] == nft.digest(rules)
assert n.replace(())[0] and n.current() == (None, "")
print("ok")
"""


@pytest.mark.netns
def test_libnftables_in_a_private_network_namespace():
    reason = _can_run_nft()
    if reason:
        pytest.skip(reason)
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run(["unshare", "-n", sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=30,
                         cwd=repo, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
