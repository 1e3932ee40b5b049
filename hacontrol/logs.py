"""structlog setup: JSON lines for the journal, readable lines on a terminal, secrets never.

Event names are stable (``tick``, ``zk_claim``, ``fence_peer`` ...): operators and
tests match on them, never on message text. The redaction processor masks any
value whose key looks like a secret, and any :class:`~hacontrol.config.schema.Secret`
wherever it appears.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping
from typing import Any

import structlog

from hacontrol.config.schema import Secret

_SECRET_KEY = re.compile(r"(secret|password|passwd|chap_key|auth_data|digest)", re.IGNORECASE)
MASK = "***"


def redact(value: Any, key: str = "") -> Any:
    if isinstance(value, Secret):
        return MASK
    if key and _SECRET_KEY.search(key) and value not in (None, "", False):
        return MASK
    if isinstance(value, Mapping):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(redact(v) for v in value)
    return value


def redact_secrets(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    """structlog processor: mask secrets in every field, at any depth."""
    return {k: redact(v, k) for k, v in event.items()}


class _Stderr:
    """Whatever sys.stderr is at the moment of writing (tests swap it; a bound stream would go stale)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return sys.stderr.isatty()


def configure(fmt: str = "auto", level: str = "info", stream: Any = None) -> None:
    stream = stream or _Stderr()
    if fmt == "auto":
        fmt = "console" if stream.isatty() else "json"
    renderer: Any = structlog.dev.ConsoleRenderer(colors=False) if fmt == "console" else \
        structlog.processors.JSONRenderer(sort_keys=True)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redact_secrets,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper(), logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
    # kazoo logs through the standard library: keep it quiet unless asked.
    logging.basicConfig(level=logging.WARNING, stream=stream)  # type: ignore[arg-type]
    logging.getLogger("kazoo").setLevel(logging.WARNING if level != "debug" else logging.INFO)
