"""Logging set-up (structlog) and a rate limiter for logs about bad input.

JSON lines when stdout is not a terminal, so journald and log shippers get
fields; readable console lines when a person is watching. Under systemd each line
starts with its syslog priority (`<4>` for a warning), which journald takes off and
keeps, so that `journalctl -p warning` finds the gateway's warnings and errors.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any, Literal

import structlog


def configure_logging(
    level: str = "info", fmt: Literal["auto", "json", "console"] = "auto", stream: Any = None
) -> None:
    """Configure structlog once, for the whole process; lines go to `stream` (stdout)."""
    stream = stream or sys.stdout
    console = fmt == "console" or (fmt == "auto" and stream.isatty())
    renderer: Any = (
        structlog.dev.ConsoleRenderer()
        if console
        else structlog.processors.JSONRenderer(sort_keys=False)
    )
    if _is_the_journal(stream):
        renderer = _WithPriority(renderer)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=True,
    )
    # Libraries log through the standard library: render their records the same way.
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,  # a library's traceback, as text
                renderer,
            ],
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    # The publisher reports broker trouble itself, with what to do about it; aio-pika's
    # and aiormq's own lines about the same events would only repeat it. The Modbus driver
    # counts bus trouble and logs it rate-limited; pymodbus would log an error line per
    # timed-out or skipped frame, several a second on a bad line.
    for name in ("aiormq", "aio_pika", "pymodbus"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


_PRIORITIES = {"critical": 2, "error": 3, "warning": 4, "info": 6, "debug": 7}
"""Syslog priorities by structlog level (`log.exception` is level "error")."""


class _WithPriority:
    """A renderer whose lines start with `<N>`, the syslog priority of their level."""

    def __init__(self, renderer: Any) -> None:
        self.renderer = renderer

    def __call__(self, logger: Any, name: str, event_dict: Any) -> str:
        priority = _PRIORITIES.get(event_dict.get("level", "info"), 6)
        return f"<{priority}>{self.renderer(logger, name, event_dict)}"


def _is_the_journal(stream: Any) -> bool:
    """systemd sets $JOURNAL_STREAM to the device and inode of the stream it connected."""
    try:
        stat = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):  # no real file (captured, closed)
        return False
    return os.environ.get("JOURNAL_STREAM") == f"{stat.st_dev}:{stat.st_ino}"


_MAX_KEYS = 256
"""Keys a `RateLimitedLog` remembers before it drops those older than its interval."""

_OVERFLOW_KEY = "(rate limiter full)"
"""Shared by new keys while all `_MAX_KEYS` are within their interval, so a flood of
distinct keys (random BLE addresses) costs neither memory nor a warning each."""


class RateLimitedLog:
    """Logs a warning at most once per `interval` per key; says how many were suppressed.

    A sensor that sends garbage ten times a second must not flood the journal,
    and the operator must still learn how much was lost.

    Memory is bounded: past `_MAX_KEYS` keys, those last logged more than `interval`
    ago are dropped (with a count of suppressed lines not yet reported: the driver's
    counters in `edge-gateway status` keep the totals), and while every key is recent
    a new key is limited under one shared key.
    """

    def __init__(self, logger: Any, interval: float = 10.0) -> None:
        self._log = logger
        self._interval = interval
        self._last: dict[str, float] = {}  # oldest first: a key moves to the end when logged
        self._suppressed: dict[str, int] = {}

    def warning(self, key: str, event: str, **fields: Any) -> bool:
        """Log unless `key` was logged within the interval; whether it was logged."""
        return self._emit("warning", key, event, fields)

    def error(self, key: str, event: str, **fields: Any) -> bool:
        return self._emit("error", key, event, fields)

    def _emit(self, level: str, key: str, event: str, fields: dict[str, Any]) -> bool:
        now = time.monotonic()
        if key not in self._last and len(self._last) >= _MAX_KEYS:
            self._drop_older_than_interval(now)
            if len(self._last) >= _MAX_KEYS:
                key = _OVERFLOW_KEY
        if now - self._last.get(key, -self._interval) < self._interval:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return False
        self._last.pop(key, None)
        self._last[key] = now
        suppressed = self._suppressed.pop(key, 0)
        if suppressed:
            fields["suppressed_since_last"] = suppressed
        getattr(self._log, level)(event, **fields)
        return True

    def _drop_older_than_interval(self, now: float) -> None:
        for key, last in list(self._last.items()):
            if now - last < self._interval:
                return  # the rest are newer
            del self._last[key]
            self._suppressed.pop(key, None)
