"""ConfigSync writes a distributed configuration atomically (the previous file kept as .prev), and a file it
cannot write leaves everything as it was, with the error in the member report (the agent keeps running)."""

from __future__ import annotations

import os
from pathlib import Path

from hacontrol.agent.configsync import ConfigSync, sha256
from hacontrol.config import loads

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "hacontrol.toml"


class Coordinator:
    def __init__(self, text: str):
        self.config_version = 7
        self.doc = {"text": text, "sha256": sha256(text), "number": 3}

    def fetch_config(self, deadline: float):
        return self.doc, self.config_version


def _sync(path: Path, old: str, new: str) -> ConfigSync:
    return ConfigSync(path, loads(old, source="test"), Coordinator(new), target=None, sha=sha256(old))


def test_a_new_configuration_replaces_the_file_and_keeps_the_previous(tmp_path):
    old = EXAMPLE.read_text()
    new = old + "\n# changed\n"
    path = tmp_path / "hacontrol.toml"
    path.write_text(old)
    sync = _sync(path, old, new)
    sync.tick(deadline=1e9)
    assert path.read_text() == new and (tmp_path / "hacontrol.toml.prev").read_text() == old
    assert sync.error == "" and sync.sha == sha256(new) and sync.number == 3
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hacontrol.toml", "hacontrol.toml.prev"]


def test_an_unwritable_file_changes_nothing_and_is_reported(tmp_path):
    old = EXAMPLE.read_text()
    new = old + "\n# changed\n"
    missing_dir = tmp_path / "gone" / "hacontrol.toml"
    sync = _sync(missing_dir, old, new)
    sync.tick(deadline=1e9)
    assert "could not be written" in sync.error and sync.sha == sha256(old) and sync.number == 0
