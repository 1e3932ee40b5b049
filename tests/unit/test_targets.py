"""The checks both target adapters make first: the backend named in the file, and this node's name."""

from __future__ import annotations

from dataclasses import replace

from hacontrol.adapters.lio.desired import problems as lio_problems
from hacontrol.adapters.tgt.desired import problems as tgt_problems
from tests.unit.test_lio_fake import lio_config


def test_each_adapter_refuses_the_other_backend_and_names_the_fix(devices):
    cfg = lio_config(devices)
    assert not [p for p in lio_problems(cfg, None) if p.key == "cluster.backend"]
    wrong = [p for p in tgt_problems(cfg, None) if p.key == "cluster.backend"]
    assert len(wrong) == 1 and "tgt adapter" in str(wrong[0]) and "run the LIO adapter" in str(wrong[0])
    tgt_cfg = replace(cfg, backend="tgt")
    wrong = [p for p in lio_problems(tgt_cfg, None) if p.key == "cluster.backend"]
    assert len(wrong) == 1 and "LIO adapter" in str(wrong[0]) and "run the tgt adapter" in str(wrong[0])


def test_an_unknown_node_is_named_with_the_nodes_the_file_has(devices):
    cfg = lio_config(devices)
    found = [p for p in lio_problems(cfg, "ctrl-x") if p.key == "node"]
    assert len(found) == 1 and all(n in str(found[0]) for n in cfg.node_names)
