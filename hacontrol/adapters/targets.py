"""What the two target adapters (tgt, LIO) share: the checks every backend makes of the configuration first,
the refusal that lists every problem, and the summary of a rolled-back apply."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hacontrol.agent.protocols import AdapterError
from hacontrol.config.schema import Config
from hacontrol.core.problems import Problem

ADAPTERS = {"lio": "LIO", "tgt": "tgt"}  # backend value -> how the docs and messages name its adapter


def backend_problems(cfg: Config, node: str | None, backend: str) -> list[Problem]:
    """The configuration is for this backend, and ``node`` is one of its controllers."""
    p: list[Problem] = []
    other = next(name for key, name in ADAPTERS.items() if key != backend)
    if cfg.backend != backend:
        p.append(Problem("cluster.backend", cfg.backend, f"this controller runs the {ADAPTERS[backend]} adapter",
                         f'set backend = "{backend}", or run the {other} adapter'))
    if node is not None and node not in cfg.node_names:
        p.append(Problem("node", node, "is not a [[node]] of this configuration",
                         f"start the agent as one of {', '.join(cfg.node_names)}"))
    return p


def refuse(what: str, found: Sequence[Any]) -> AdapterError:
    lines = "\n".join(f"  - {p}" for p in found)
    return AdapterError(f"{what}: {len(found)} problem(s), nothing was changed:\n{lines}")


def rollback_summary(steps: int, notes: Sequence[str], failures: Sequence[str]) -> str:
    text = f"rolled back {steps} applied step(s)"
    if notes:
        text += "; not restorable: " + "; ".join(notes)
    if failures:
        text += "; ROLLBACK INCOMPLETE: " + "; ".join(failures)
    return text
