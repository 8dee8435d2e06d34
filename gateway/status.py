"""What `edge-gateway status` shows, and the file through which a running gateway tells it.

The running gateway rewrites `status.json` in its state directory every few
seconds; the buffer's own figures are read from the database directly, so the
command works whether or not the gateway runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import structlog

from drivers.base import Driver
from gateway.buffer import Buffer
from gateway.clock import system_clock_synchronized
from gateway.logs import RateLimitedLog
from gateway.publisher import Publisher

STATUS_FILE = "status.json"
BUFFER_FILE = "buffer.db"
_INTERVAL_S = 2.0


class StatusWriter:
    """Writes the live figures of one running gateway, atomically, every two seconds."""

    def __init__(
        self,
        state_dir: Path,
        buffer: Buffer,
        publisher: Publisher,
        drivers: Callable[[], Sequence[Driver]],
    ) -> None:
        """`drivers` gives the drivers running now: a reload may replace some."""
        self.path = state_dir / STATUS_FILE
        self.buffer = buffer
        self.publisher = publisher
        self.drivers = drivers
        self.started = time.time()
        self._started_monotonic = time.monotonic()
        self._rate_limited = RateLimitedLog(structlog.get_logger("gateway.status"), 60.0)

    async def run(self) -> None:
        try:
            while True:
                self.write()
                await asyncio.sleep(_INTERVAL_S)
        finally:
            self.write(running=False)

    def snapshot(self, running: bool = True) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "running": running,
            "started": self.started,
            "updated": time.time(),
            "uptime_s": round(time.monotonic() - self._started_monotonic, 1),
            "buffer": {"depth": self.buffer.depth, **asdict(self.buffer.counters)},
            "publisher": {
                **asdict(self.publisher.counters),
                "max_in_flight": self.publisher.config.max_in_flight,
            },
            "clock_synchronized": system_clock_synchronized(),
            "drivers": {d.name: d.stats.snapshot() for d in self.drivers()},
        }

    def write(self, running: bool = True) -> None:
        """Best effort: a full disk must not stop the gateway over its status report."""
        temporary = self.path.with_suffix(".tmp")
        try:
            temporary.write_text(json.dumps(self.snapshot(running)), encoding="utf-8")
            os.replace(temporary, self.path)
        except OSError as exc:
            self._rate_limited.warning(
                "status", "cannot write the status file", path=str(self.path), error=str(exc)
            )


def read_status(state_dir: Path) -> dict[str, Any]:
    """The buffer as the disk holds it, plus the gateway's last report, if any."""
    database = state_dir / BUFFER_FILE
    report: dict[str, Any] = {"state_dir": str(state_dir), "buffer": buffer_figures(database)}
    try:
        live = json.loads((state_dir / STATUS_FILE).read_text(encoding="utf-8"))
    except PermissionError:  # the state directory is the service's: 0750
        live = None
        report["status_error"] = f"cannot read {state_dir / STATUS_FILE}: run status with sudo"
    except (OSError, ValueError):
        live = None
    report["gateway"] = live
    return report


def buffer_figures(database: Path) -> dict[str, Any]:
    """What the buffer's file holds, read from it (read-only): a running gateway's or not."""
    try:
        if not database.exists():
            return {
                "path": str(database),
                "exists": False,
                "dir_exists": database.parent.is_dir(),
                "not_a_dir": database.parent.exists() and not database.parent.is_dir(),
            }
        on_disk = bytes_on_disk(database)
    except OSError as exc:  # the state directory is the service's: 0750
        return {
            "path": str(database),
            "exists": True,
            "error": f"cannot read {database.parent}: {exc.strerror}; run status with sudo",
        }
    figures: dict[str, Any] = {"path": str(database), "exists": True, "bytes_on_disk": on_disk}
    try:
        with _read_only(database) as conn:
            depth = conn.execute("SELECT coalesce(sum(count), 0) FROM chunks").fetchone()[0]
        oldest = oldest_accepted(database)
    except sqlite3.Error as exc:
        figures["error"] = f"cannot read the buffer: {exc}"
        return figures
    figures["depth"] = depth
    figures["oldest_age_s"] = round(time.time() - oldest, 1) if oldest else None
    return figures


def bytes_on_disk(database: Path) -> int:
    """The buffer's database and its write-ahead log, in bytes; OSError if unreadable."""
    files = (database, Path(f"{database}-wal"))
    return sum(path.stat().st_size for path in files if path.exists())


def oldest_accepted(database: Path) -> float | None:
    """When the oldest reading in the buffer was accepted (Unix time); None when empty.

    One row by its key, not a scan: the metrics endpoint asks at every scrape, also while
    an outage's backlog fills the buffer."""
    with _read_only(database) as conn:
        row = conn.execute("SELECT accepted FROM chunks ORDER BY first_seq LIMIT 1").fetchone()
    return row[0] if row else None


@contextlib.contextmanager
def _read_only(database: Path) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5)
    try:
        yield conn
    finally:
        conn.close()


def is_running(report: dict[str, Any]) -> bool:
    live = report["gateway"]
    return bool(live and live["running"] and time.time() - live["updated"] <= 3 * _INTERVAL_S)


def _is_a_gateway(pid: int) -> bool:
    """Whether `pid` is an edge-gateway process (a pid may have been reused since)."""
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"edge-gateway" in command or b"gateway.cli" in command


def format_status(report: dict[str, Any]) -> str:
    """The report as lines a person reads at a glance."""
    buffer = report["buffer"]
    lines = [f"buffer     {buffer['path']}"]
    if not buffer.get("exists"):
        lines.append(
            "           no buffer yet (the gateway has not run with this state_dir)"
            if buffer["dir_exists"]
            else f"           {Path(buffer['path']).parent} "
            + ("is not a directory" if buffer.get("not_a_dir") else "does not exist")
            + ": check gateway.state_dir"
        )
    elif "error" in buffer:
        lines.append(f"           {buffer['error']}")
    else:
        age = buffer["oldest_age_s"]
        lines.append(
            f"           {buffer['depth']} readings waiting, oldest "
            + (f"{age:.0f} s old" if age is not None else "-")
            + f", {buffer['bytes_on_disk'] / 1e6:.1f} MB on disk"
        )
    live = report["gateway"]
    if live is None:
        lines.append(
            f"gateway    {report['status_error']}"
            if "status_error" in report
            else "gateway    no status file: the gateway has not run here"
        )
        return "\n".join(lines)
    stale = time.time() - live["updated"]
    if not is_running(report) and live["running"] and _is_a_gateway(live["pid"]):
        lines.append(
            f"gateway    NOT RESPONDING: pid {live['pid']} runs, but its last report is "
            f"{stale:.0f} s old (hung, or it cannot write {STATUS_FILE}: a full disk?); "
            "see journalctl -u edge-gateway"
        )
    elif not is_running(report):
        lines.append(f"gateway    NOT RUNNING (last report {stale:.0f} s ago, pid {live['pid']})")
    else:
        lines.append(f"gateway    running, pid {live['pid']}, up {_uptime(live):.0f} s")
    counters = live["buffer"]
    lines.append(
        f"           accepted {counters['accepted']}, rejected {counters['rejected']}, "
        f"dropped {counters['dropped']}"
        + (
            f" ({counters['dropped_ever']} since the buffer was created)"
            if counters.get("dropped_ever", 0) > counters["dropped"]
            else ""
        )
        + f", commits {counters['commits']}"
        + (f", DAMAGED chunks set aside {counters['damaged']}" if counters.get("damaged") else "")
    )
    pub = live["publisher"]
    last = pub["last_confirm"]
    uplink = pub["connected_url"] or "DISCONNECTED"
    if not pub["connected_url"] and pub.get("last_error"):
        uplink += f" (last error: {pub['last_error']})"
    if pub["blocked"]:
        uplink += " (BLOCKED by broker alarm)"
    lines.append(f"uplink     {uplink}")
    lines.append(
        f"           published {pub['published_readings']} readings in "
        f"{pub['published_messages']} messages, unconfirmed {pub['in_flight']} of "
        f"{pub.get('max_in_flight', '?')}, "
        f"returned {pub['returned']}, nacked {pub['nacked']}, "
        + (f"TOO LARGE for the broker {pub['too_large']}, " if pub.get("too_large") else "")
        + "last confirm "
        + (f"{time.time() - last:.0f} s ago" if last else "never")
    )
    if live.get("clock_synchronized") is False:
        lines.append("clock      NOT synchronised: readings are flagged clock_unsynchronized")
    elif "clock_synchronized" in live:
        lines.append("clock      synchronised")
    for name, stats in live["drivers"].items():
        seen = stats["last_reading"]
        lines.append(
            f"driver     {name} ({stats['type']}): {stats['state']}, {stats['readings']} readings"
            + (f", last {time.time() - seen:.0f} s ago" if seen else "")
            + f", malformed {stats['malformed']}, oversized {stats['oversized']}"
            + "".join(f", {kind} {n}" for kind, n in sorted(stats.get("counters", {}).items()))
            + f", errors {stats['errors']}"
            + (
                f" (last{_ago(stats.get('last_error_age_s'), stale)}: {stats['last_error']})"
                if stats["last_error"]
                else ""
            )
        )
    return "\n".join(lines)


def _ago(age_s: float | None, stale_s: float) -> str:
    """' 5 s ago', ' 12 min ago', ' 3 h ago': `age_s` as of the report, `stale_s` ago; nothing
    for a report without it (written by an older version)."""
    if age_s is None:
        return ""
    age = age_s + max(0.0, stale_s)
    if age < 120:
        return f" {age:.0f} s ago"
    if age < 7200:
        return f" {age / 60:.0f} min ago"
    return f" {age / 3600:.0f} h ago"


def _uptime(live: dict[str, Any]) -> float:
    """From the monotonic clock: a Pi without a real-time clock steps its wall clock by days
    when NTP first answers, after the gateway started."""
    if "uptime_s" in live:
        return float(live["uptime_s"])
    return float(live["updated"] - live["started"])  # written by an older version
