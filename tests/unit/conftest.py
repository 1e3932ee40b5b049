"""Fixtures of the LIO adapter's unit tests: an in-memory LIO (configfs as the kernel would answer it) and
placeholder backing devices."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.test_lio_fake import FakeLio, make_devices


@pytest.fixture
def lio(tmp_path: Path) -> FakeLio:
    return FakeLio(tmp_path)


@pytest.fixture
def devices(tmp_path: Path) -> list[str]:
    return make_devices(tmp_path)
