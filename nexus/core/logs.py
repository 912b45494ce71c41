"""Process logging from `[logging]`: level, `pretty` or `json` lines on stderr, per-component levels.

`configure_logging` is called once by each `nexus` process at start-up. Components are logger names below
`nexus.` (`router`, `request`, `worker`, `dashboard`, ...); Rust Nexus's names map onto ours: `api` ->
`request` (one line per request), `routing` -> `router`, `health` -> `worker`. Levels take Rust Nexus's
names too (`trace` is DEBUG, `warn` WARNING).

A JSON line is one object: `ts`, `level`, `logger`, `message`, plus the fields a record carries in
`extra={"fields": {...}}` (the request log's). Pretty lines show the same fields as `key=value`.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any

import orjson

from nexus.core.config import LoggingConfig

__all__ = ["COMPONENT_ALIASES", "JsonFormatter", "PrettyFormatter", "configure_logging", "level_of"]

COMPONENT_ALIASES = {"api": "request", "routing": "router", "health": "worker"}
_LEVELS = {"trace": logging.DEBUG, "debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING,
           "warning": logging.WARNING, "error": logging.ERROR, "critical": logging.CRITICAL}


def level_of(name: str) -> int:
    return _LEVELS[name.lower()]


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = getattr(record, "fields", None)
    return fields if isinstance(fields, dict) else {}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **_fields(record),
        }
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


class PrettyFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = _fields(record)
        if fields:
            line += " " + " ".join(f"{k}={v}" for k, v in fields.items() if v is not None and k != "messages")
        return line


def configure_logging(cfg: LoggingConfig, stream: Any = None) -> logging.Handler:
    """Install one stderr handler on the `nexus` logger with `cfg`'s format and levels; returns it."""
    root = logging.getLogger("nexus")
    for old in [h for h in root.handlers if getattr(h, "_nexus", False)]:
        root.removeHandler(old)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler._nexus = True  # type: ignore[attr-defined]
    handler.setFormatter(JsonFormatter() if cfg.format == "json" else PrettyFormatter())
    root.addHandler(handler)
    root.setLevel(level_of(cfg.level))
    root.propagate = False
    for component, level in cfg.component_levels.items():
        name = COMPONENT_ALIASES.get(component, component)
        logging.getLogger(f"nexus.{name}").setLevel(level_of(level))
    return handler
