"""What the configured target backend cannot do or advises against, found without touching it.

Shared by `hactl config check` and the agent's start (which refuses what the check refuses), so a unit
needs no separate check process before the agent: under a slow or loaded host each Python start costs seconds.
"""

from __future__ import annotations

from typing import Any

from hacontrol.config.schema import Config
from hacontrol.config.semantics import warnings


def backend_problems(cfg: Config) -> list[Any]:
    """Refusals of the backend (tgt: LUN 0, LUN masking, ...); LIO has none beyond the schema's."""
    if cfg.backend == "tgt":
        from hacontrol.adapters.tgt import desired

        return desired.problems(cfg, None)
    return []


def all_warnings(cfg: Config) -> list[Any]:
    """Legal but risky settings, the backend's included."""
    extra: list[Any] = []
    if cfg.backend == "tgt":
        from hacontrol.adapters.tgt import desired

        extra = desired.warnings(cfg)
    return warnings(cfg) + extra
