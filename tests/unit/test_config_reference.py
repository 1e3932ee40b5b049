"""docs/configuration.md and the loader agree: every key read is documented and every documented key is read."""

from __future__ import annotations

import re
from pathlib import Path

from hacontrol.config import loads, reader

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "configuration.md").read_text()

# The example covers nearly everything; this adds the branches it does not take.
EXTRA = """
[[node.fencing]]
method = "qmp"
socket = "/run/qemu/a.qmp"
[[node.fencing]]
method = "command"
argv = ["/usr/sbin/fence_x"]
"""
ACL = """
  [[target.acl]]
  chap_user = "esx-cluster"
    [target.acl.auth]
    userid = "esx-cluster"
    secret = "ClusterChap-01"
"""


def documented() -> set[str]:
    return set(re.findall(r"^\| `([a-z_.<>-]+)` \|", DOC, flags=re.MULTILINE))


def read_keys() -> set[str]:
    seen: set[str] = set()
    reader.key_observer = seen.add
    try:
        text = (ROOT / "examples" / "hacontrol.toml").read_text()
        text = text.replace('[[node]]\nname = "ctrl-b"', EXTRA + '\n[[node]]\nname = "ctrl-b"', 1)
        text = text.replace("[fencing]\n", ACL + "\n[fencing]\n", 1)
        loads(text)
    finally:
        reader.key_observer = None
    return {re.sub(r"^vip\.interface_overrides\..*", "vip.interface_overrides.<node>", k) for k in seen}


def test_every_key_the_loader_reads_is_documented_and_vice_versa():
    keys = read_keys()
    docs = documented()
    assert keys - docs == set(), "read by the loader but missing from docs/configuration.md"
    assert docs - keys == set(), "documented but never read by the loader"
