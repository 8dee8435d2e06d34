"""The durable store-and-forward buffer: readings wait here, on disk, for the broker's confirm.

One SQLite database in WAL mode with `synchronous=FULL`. All readings put during one
commit interval become one *chunk*: one row holding the readings compressed together.
One commit (one fsync) serves every `put()` of the interval (group commit), and a
chunk row costs the SD card far fewer written bytes than a row per reading.

Reading ids are `<stream>-<seq>`: `stream` is random per database file and `seq` only
grows, so ids are never reused, not even after a corrupt database is moved aside.

The publisher reads chunks in order and acknowledges a chunk once every reading in
it is confirmed; deletes are applied lazily, in the next commit at most once a
second, because a lost delete only costs a duplicate after a crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import secrets
import sqlite3
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import structlog

from gateway.errors import AcceptedThenCancelled, BufferFull, StorageError
from gateway.logs import RateLimitedLog
from gateway.model import Encoded, Entry, Reading, flag_clock_unsynchronized
from gateway.progress import Progress

log = structlog.get_logger("gateway.buffer")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS chunks (
    first_seq INTEGER PRIMARY KEY,
    count INTEGER NOT NULL,
    accepted REAL NOT NULL,
    data BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS damaged AS SELECT * FROM chunks WHERE 0;
"""
_DELETE_INTERVAL_S = 1.0
_COMPRESS_LEVEL = 1
_DISK_RESERVE = 4 * 1024**2
"""Disk space the buffer leaves free for itself: SQLite needs room on the disk to delete (new
WAL frames) and to checkpoint, so a disk the buffer filled to the last byte could never be
emptied, not even of what the broker confirmed. A WAL checkpoint's worth, four times."""
_CACHE_KIB = 256
"""SQLite's page cache per connection (its default is 2 MiB). Chunks are written once and
read once, in order: a cache saves little, and under overload both filled up."""
_DROPPED = "buffer full: dropped the oldest readings (when_full: drop_oldest)"
_DROPS_QUIET_S = 10.0
"""Drops that have stopped this long get their line, rate-limited or not."""
_CANCEL_WAIT_S = 5.0
"""How long a cancelled put waits for the commit that has its readings (a commit takes
milliseconds; an SD card may stall one for a second or two)."""
_RECENT_READINGS = 1_000
"""Readings of the latest commits kept in memory, so that a publisher keeping up takes them
from there: no thread hop, no read, no inflate (latency, CPU). Two to three commits at
10,000 readings/s, under 0.5 MB of simulator readings; a publisher further behind reads
from disk."""

WhenFull = Literal["reject_new", "drop_oldest"]


@dataclass(frozen=True, slots=True)
class StoredReading:
    """A reading as the buffer hands it to the publisher: encoded, with its id's sequence."""

    seq: int
    device: str
    source: str
    body: bytes


@dataclass(frozen=True, slots=True)
class Chunk:
    first_seq: int
    accepted: float
    readings: list[StoredReading]


@dataclass(slots=True)
class BufferCounters:
    """What the buffer has done since start; read by status and metrics."""

    accepted: int = 0
    rejected: int = 0
    damaged: int = 0
    """Chunks whose bytes did not decode, kept apart in the table `damaged`."""
    dropped: int = 0
    dropped_ever: int = 0
    """Dropped since the buffer's file was created: kept in it, exact across crashes."""
    commits: int = 0
    last_commit: float = 0.0


@dataclass(slots=True, eq=False)  # one put is one put: found and taken back by identity
class _Put:
    entries: list[Entry]
    future: asyncio.Future[None]


@dataclass(slots=True)
class _WriterState:
    puts: list[_Put] = field(default_factory=list)
    acks: list[int] = field(default_factory=list)
    damaged: list[int] = field(default_factory=list)
    closing: bool = False


def _is_corruption(exc: sqlite3.DatabaseError) -> bool:
    """A damaged or foreign file, as opposed to a disk that is full, failing or not ours."""
    name = getattr(exc, "sqlite_errorname", None)
    if name is None:  # raised by us: the integrity check failed
        return "integrity check failed" in str(exc)
    return name in ("SQLITE_CORRUPT", "SQLITE_NOTADB") or name.startswith("SQLITE_CORRUPT_")


def _is_disk_full(exc: BaseException) -> bool:
    return getattr(exc, "sqlite_errorname", None) == "SQLITE_FULL"


def _closed_cleanly(conn: sqlite3.Connection) -> bool:
    """Whether the last process to use this database closed it (no crash, no power cut)."""
    try:
        row = conn.execute("SELECT value FROM meta WHERE key='clean'").fetchone()
    except sqlite3.OperationalError:  # a new file: no meta table yet
        return False
    return row is not None and row[0] == "1"


async def _committed(future: asyncio.Future[None]) -> bool:
    """Whether the commit that has `future`'s put ends with it on disk, within
    `_CANCEL_WAIT_S`. False if it fails, or takes longer (a disk that hangs must not hang
    a reload or a stop): the caller may then put it again, a duplicate, never a loss."""
    done, _ = await asyncio.wait({future}, timeout=_CANCEL_WAIT_S)
    return bool(done) and future.exception() is None


def encode_chunk(entries: Sequence[Entry]) -> bytes:
    """First line: JSON list of [device, source]; then one JSON reading per line; deflated."""
    header = json.dumps([[d, s] for d, s, _ in entries], separators=(",", ":")).encode()
    return zlib.compress(b"\n".join([header, *(body for _, _, body in entries)]), _COMPRESS_LEVEL)


def decode_chunk(first_seq: int, accepted: float, data: bytes) -> Chunk:
    header, *bodies = zlib.decompress(data).split(b"\n")
    keys = json.loads(header)
    entries = [(device, source, body) for (device, source), body in zip(keys, bodies, strict=True)]
    return chunk_of(first_seq, accepted, entries)


def chunk_of(first_seq: int, accepted: float, entries: Sequence[Entry]) -> Chunk:
    """The chunk whose readings are `entries` (device, source, body), numbered from `first_seq`."""
    return Chunk(
        first_seq,
        accepted,
        [StoredReading(first_seq + i, *entry) for i, entry in enumerate(entries)],
    )


class Buffer:
    """Durable FIFO of readings. Use as `async with Buffer(...) as buffer`."""

    def __init__(
        self,
        path: Path,
        *,
        max_bytes: int,
        when_full: WhenFull = "reject_new",
        commit_interval: float = 0.04,
        clock_synchronized: Callable[[], bool] | None = None,
    ) -> None:
        """`clock_synchronized` (the gateway passes `gateway.clock.system_clock_synchronized`)
        is asked once per `put()`: readings accepted while it says no are flagged
        `clock_unsynchronized` (see docs/message-format.md). None: never flag."""
        self.path = path
        self.max_bytes = max_bytes
        self.when_full = when_full
        self.commit_interval = commit_interval
        self.counters = BufferCounters()
        self.stream = ""
        self._state = _WriterState()
        self._cond = threading.Condition()
        self._closing = threading.Event()
        self._writer: threading.Thread | None = None
        self._reader: sqlite3.Connection | None = None
        self._reader_pool = ThreadPoolExecutor(1, thread_name_prefix="buffer-reader")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._committed = asyncio.Event()
        self._recent: deque[Chunk] = deque()
        """The latest committed chunks, oldest first, without gaps (event loop thread only)."""
        self._recent_readings = 0
        self._failure: StorageError | None = None
        self._failed = asyncio.Event()
        self._clock_synchronized = clock_synchronized
        self._rate_limited = RateLimitedLog(log)
        self._unlogged_drops = 0
        """Readings dropped since the last `dropped the oldest` line (writer thread only)."""
        self._last_drop = 0.0
        self.progress = Progress()
        """Puts waiting for their commit: the watchdog's view of the writer thread."""
        self.read_progress = Progress()
        """Fetches from disk in hand: the watchdog's view of the reader thread (a backlog
        read that hangs on a failing SD card stops publishing while puts may still go on)."""
        self._depth = 0
        self._next_seq = 1
        self._marked_in_use = False
        self._page_size = 1024

    # --- lifetime -------------------------------------------------------------

    async def __aenter__(self) -> Buffer:
        self._loop = asyncio.get_running_loop()
        conn = await self._loop.run_in_executor(self._reader_pool, self._open)
        self._writer = threading.Thread(
            target=self._write_loop, args=(conn,), name="buffer-writer", daemon=True
        )
        self._writer.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """Commit what was put, then close; waits for the writer thread."""
        with self._cond:
            self._state.closing = True
            self._cond.notify()
        self._closing.set()
        if self._writer is not None:
            await asyncio.to_thread(self._writer.join)
        # A fetch abandoned by a cancel may still run: let it end before its connection does.
        await asyncio.to_thread(self._reader_pool.shutdown, wait=True)
        if self._reader is not None:
            self._reader.close()

    def _open(self) -> sqlite3.Connection:
        """Open the database, moving an unreadable one aside rather than crash-looping on it."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                conn = self._connect()
            except sqlite3.DatabaseError as exc:
                if not _is_corruption(exc):
                    raise  # disk full, I/O error, permissions: the file may be fine
                self._quarantine(exc)
                conn = self._connect()
        except (sqlite3.Error, OSError) as exc:
            raise StorageError(
                f"cannot open the buffer {self.path}: {exc}; check the disk (space, "
                "permissions of the state directory), then restart"
            ) from None
        self._reader = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._reader.execute("PRAGMA busy_timeout=5000")
        self._reader.execute(f"PRAGMA cache_size=-{_CACHE_KIB}")
        return conn

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            conn.execute("PRAGMA busy_timeout=5000")
            conn.execute(f"PRAGMA cache_size=-{_CACHE_KIB}")
            if not conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall():
                conn.execute("PRAGMA page_size=1024")  # small pages: fewer bytes per commit
            self._page_size = conn.execute("PRAGMA page_size").fetchone()[0]
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA journal_size_limit=8388608")
            # Debian builds SQLite with SECURE_DELETE: every deleted chunk's pages would be
            # written again, as zeros (on the SD card, and into a full disk's last bytes).
            conn.execute("PRAGMA secure_delete=FAST")
            if not _closed_cleanly(conn):  # a full check costs minutes on a big SD-card file
                check = conn.execute("PRAGMA quick_check").fetchone()[0]
                if check != "ok":
                    raise sqlite3.DatabaseError(f"integrity check failed: {check}")
            conn.executescript(_SCHEMA)
            row = conn.execute("SELECT value FROM meta WHERE key='stream'").fetchone()
            if row is None:
                self.stream = secrets.token_hex(6)
                conn.execute("INSERT INTO meta VALUES ('stream', ?)", (self.stream,))
            else:
                self.stream = row[0]
            last = conn.execute(
                "SELECT max(first_seq + count) FROM (SELECT first_seq, count FROM chunks "
                "UNION ALL SELECT first_seq, count FROM damaged)"
            ).fetchone()
            saved = conn.execute("SELECT value FROM meta WHERE key='next_seq'").fetchone()
            self._next_seq = max(last[0] or 1, int(saved[0]) if saved else 1)
            self._depth = conn.execute("SELECT coalesce(sum(count), 0) FROM chunks").fetchone()[0]
            dropped = conn.execute("SELECT value FROM meta WHERE key='dropped'").fetchone()
            self.counters.dropped_ever = int(dropped[0]) if dropped else 0
        except BaseException:
            conn.close()
            raise
        return conn

    def _quarantine(self, exc: sqlite3.DatabaseError) -> None:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        n = 1
        while target.exists():  # a restart loop can quarantine twice in one second
            target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{n}")
            n += 1
        try:
            for suffix in ("", "-wal", "-shm"):
                part = Path(f"{self.path}{suffix}")
                if part.exists():
                    part.rename(Path(f"{target}{suffix}"))
        except OSError as move_error:
            raise StorageError(
                f"buffer database {self.path} is unreadable ({exc}) and could not be moved "
                f"aside ({move_error.strerror}); move or delete it by hand, then restart"
            ) from None
        log.error(
            "buffer database unreadable; moved aside, starting an empty one",
            path=str(self.path),
            moved_to=str(target),
            error=str(exc),
            hint="readings in the old file were not published; keep it for recovery",
        )

    # --- the producer side ------------------------------------------------------

    async def put(self, readings: Sequence[Reading] | Encoded) -> None:
        """Return once the readings are committed to disk (accepted).

        Raises `BufferFull` (when_full=reject_new) or `StorageError`; then nothing
        of this call was accepted and the caller must not acknowledge its source.
        Cancelled, it takes the readings back if their commit has not begun (a plain
        CancelledError: nothing accepted); if it has, it waits for that commit and raises
        `AcceptedThenCancelled` when the readings are on disk.
        """
        if not readings:
            return
        if self._failure is not None:
            raise self._failure
        assert self._loop is not None, "use the buffer inside `async with`"
        entries = (readings if isinstance(readings, Encoded) else Encoded.of(readings)).entries
        if self._clock_synchronized is not None and not self._clock_synchronized():
            entries = [(d, s, flag_clock_unsynchronized(body)) for d, s, body in entries]
        future = self._loop.create_future()
        with self._cond:
            if self._failure is not None:  # the writer failed since the check above
                raise self._failure
            if self._state.closing:
                raise StorageError("the buffer is closing; the reading was not accepted")
            put = _Put(entries, future)
            self._state.puts.append(put)
            self._cond.notify()
        self.progress.begin()
        try:
            await asyncio.shield(future)  # a cancel must not lose what the commit decides
        except asyncio.CancelledError:
            with self._cond:
                withdrawn = put in self._state.puts
                if withdrawn:
                    self._state.puts.remove(put)
            if withdrawn or not await _committed(future):
                raise
            raise AcceptedThenCancelled from None
        finally:
            self.progress.end()

    # --- the publisher side -------------------------------------------------------

    async def fetch(self, after_seq: int, max_readings: int) -> list[Chunk]:
        """Chunks after `after_seq`, oldest first; `after_seq` is 0 or a chunk's last seq.

        Chunks up to `after_seq` are taken: the latest ones are no longer kept in memory.
        """
        assert self._loop is not None
        self._forget(after_seq)
        recent = self._recent
        if recent and recent[0].first_seq <= after_seq + 1:  # nothing between is on disk only
            chunks = [recent[0]]
            total = len(recent[0].readings)
            for chunk in itertools.islice(recent, 1, None):
                total += len(chunk.readings)
                if total > max_readings:
                    break
                chunks.append(chunk)
            return chunks
        self.read_progress.begin()
        try:
            return await self._loop.run_in_executor(
                self._reader_pool, self._fetch, after_seq, max_readings
            )
        finally:
            self.read_progress.end()

    def _fetch(self, after_seq: int, max_readings: int) -> list[Chunk]:
        """Rows are stepped one at a time, so that only the chunks taken are read: a backlog
        after an outage would otherwise load hundreds of chunks to use two."""
        assert self._reader is not None
        chunks: list[Chunk] = []
        total = 0
        try:
            with contextlib.closing(  # closed: an open statement would hold back checkpoints
                self._reader.execute(
                    "SELECT first_seq, count, accepted, data FROM chunks "
                    "WHERE first_seq > ? ORDER BY first_seq",
                    (after_seq,),
                )
            ) as rows:
                for first_seq, count, accepted, data in rows:
                    if chunks and total + count > max_readings:
                        break
                    try:
                        chunks.append(decode_chunk(first_seq, accepted, data))
                    except (zlib.error, ValueError) as exc:
                        self._set_aside(first_seq, count, exc)
                        continue
                    total += count
        except sqlite3.DatabaseError as exc:
            # Corrupt pages: stop; the next start checks the file and moves it aside.
            raise self._storage_error(exc) from None
        return chunks

    def _set_aside(self, first_seq: int, count: int, exc: Exception) -> None:
        """A chunk whose bytes are damaged cannot be published: keep it apart, go on."""
        log.error(
            "buffer chunk damaged; moved to the table 'damaged', its readings are not published",
            path=str(self.path),
            first_seq=first_seq,
            readings=count,
            error=str(exc),
            hint="keep the database for recovery: the rows stay in the table 'damaged'",
        )
        with self._cond:
            self._state.damaged.append(first_seq)
            self._cond.notify()

    async def wait_for_data(self, after_seq: int) -> None:
        """Return once readings with seq > `after_seq` are committed (at once if they are)."""
        while self.last_seq <= after_seq:
            self._committed.clear()
            if self.last_seq > after_seq:  # committed between the check and the clear
                return
            await self._committed.wait()

    @property
    def last_seq(self) -> int:
        """The highest seq committed so far (0 when none)."""
        return self._next_seq - 1

    def ack(self, chunk_first_seqs: Sequence[int]) -> None:
        """Every reading of these chunks is confirmed by the broker: delete them (lazily)."""
        with self._cond:
            self._state.acks.extend(chunk_first_seqs)
            self._cond.notify()

    @property
    def depth(self) -> int:
        """Readings on disk, not yet confirmed (including any in flight)."""
        return self._depth

    async def wait_failed(self) -> StorageError:
        """Return once the disk failed in a way that retrying will not fix."""
        await self._failed.wait()
        assert self._failure is not None
        return self._failure

    # --- the writer thread ----------------------------------------------------------

    def _write_loop(self, conn: sqlite3.Connection) -> None:
        last_commit = 0.0
        last_delete = time.monotonic()
        puts: list[_Put] = []
        try:
            while True:
                with self._cond:
                    while not (
                        self._state.puts
                        or self._state.acks
                        or self._state.damaged
                        or self._state.closing
                    ):
                        quiet_in = self._drops_quiet_in()
                        if quiet_in == 0.0:
                            break  # idle, and the last drops are still to be told
                        self._cond.wait(quiet_in)
                    closing = self._state.closing
                wait = last_commit + self.commit_interval - time.monotonic()
                if wait > 0 and not closing:
                    self._closing.wait(wait)  # gather more puts: one fsync for all of them
                with self._cond:
                    puts, self._state.puts = self._state.puts, []
                    damaged, self._state.damaged = self._state.damaged, []
                acks = []
                if closing or time.monotonic() - last_delete >= _DELETE_INTERVAL_S:
                    acks = self._take_acks()
                if damaged:
                    self._set_aside_now(conn, damaged)
                if not puts and not acks:
                    if closing:
                        return
                    if self._drops_quiet_in() == 0.0:
                        self._log_the_last_drops()
                    with self._cond:  # only acks, not yet due: wait for them or for puts
                        due = last_delete + _DELETE_INTERVAL_S
                        while (
                            not (self._state.puts or self._state.damaged or self._state.closing)
                            and (left := due - time.monotonic()) > 0
                        ):
                            self._cond.wait(left)
                    continue
                if acks:
                    last_delete = time.monotonic()
                self._commit(conn, puts, acks, retry_acks=not closing)
                last_commit = time.monotonic()
        except BaseException as exc:  # a bug here must not leave every put() waiting for ever
            failure = StorageError(f"the buffer's writer stopped: {type(exc).__name__}: {exc}")
            log.critical(
                "buffer writer failed; the gateway stops and systemd restarts it",
                path=str(self.path),
                exc_info=True,
                hint="a bug: please report it with this log; accepted readings stay on disk",
            )
            with self._cond:  # failed first, so that no put() comes after the stranded ones
                self._failure = failure
                stranded = puts + self._state.puts  # the commit's own puts, and later ones
                self._state.puts = []
            with contextlib.suppress(RuntimeError):  # the loop may be gone already
                self._fail(failure)
                assert self._loop is not None
                self._loop.call_soon_threadsafe(self._settle, stranded, failure, None)
            raise
        finally:
            self._log_the_last_drops()
            if self._failure is None:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("INSERT OR REPLACE INTO meta VALUES ('clean', '1')")
            conn.close()

    def _drops_logged(self) -> dict[str, object]:
        return {
            "dropped": self._unlogged_drops,
            "dropped_total": self.counters.dropped,
            "max_bytes": self.max_bytes,
            "hint": "raise buffer.max_bytes, or use when_full: reject_new to hold sources",
        }

    def _drops_quiet_in(self) -> float | None:
        """Seconds until the drops not yet logged have been quiet for `_DROPS_QUIET_S`
        (0.0: they have); None when there are none."""
        if not self._unlogged_drops:
            return None
        return max(0.0, self._last_drop + _DROPS_QUIET_S - time.monotonic())

    def _log_the_last_drops(self) -> None:
        """The drops after the last rate-limited line: once they have stopped, or at close.
        Without this line the journal would never tell the last ones of a burst."""
        if self._unlogged_drops:
            log.warning(_DROPPED, **self._drops_logged())
            self._unlogged_drops = 0

    def _take_acks(self) -> list[int]:
        with self._cond:
            acks, self._state.acks = self._state.acks, []
        return acks

    def _commit(
        self, conn: sqlite3.Connection, puts: list[_Put], acks: list[int], retry_acks: bool
    ) -> None:
        """One transaction: deletes, then the new chunk; settle the puts' futures after."""
        entries = [entry for put in puts for entry in put.entries]
        data = encode_chunk(entries) if entries else b""
        first_seq = self._next_seq
        accepted = time.time()
        error: BaseException | None = None
        dropped = dropped_through = 0
        deleted = 0
        try:
            self._begin(conn)
            full = self._full_for(conn, len(data)) if entries else None
            if full is not None:
                # Deletes wait to be batched (fewer page writes), but confirmed chunks make
                # room before unconfirmed ones are dropped or new readings refused.
                acks = [*acks, *self._take_acks()]
            if acks:
                deleted = self._delete(conn, acks)
            if entries:
                conn.execute("SAVEPOINT intake")
                try:
                    if full is not None and deleted:  # the deletes may have made the room
                        full = self._full_for(conn, len(data))
                    dropped, dropped_through = self._make_room(conn, len(data), full)
                    conn.execute(
                        "INSERT INTO chunks VALUES (?, ?, ?, ?)",
                        (first_seq, len(entries), accepted, data),
                    )
                except BufferFull as exc:
                    conn.execute("ROLLBACK TO intake")  # refuse the readings, keep the deletes
                    error = exc
                conn.execute("RELEASE intake")
            if deleted or dropped:
                self._save_next_seq(conn)
            if dropped:  # in the same transaction: a crash cannot lose the count
                conn.execute(
                    "INSERT OR REPLACE INTO meta VALUES ('dropped', ?)",
                    (str(self.counters.dropped_ever + dropped),),
                )
            self._commit_transaction(conn)
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            deleted = dropped = dropped_through = 0
            if entries and acks and _is_disk_full(exc):
                deleted = self._delete_alone(conn, acks, retry_acks)
            elif retry_acks:  # not deleted: try again with the next commit (at close: a
                with self._cond:  # lost delete costs only a duplicate after the restart)
                    self._state.acks.extend(acks)
            error = self._storage_error(exc)
        added = len(entries) if error is None else 0
        self._next_seq += added
        self._depth += added - deleted - dropped
        self.counters.accepted += added
        self.counters.dropped += dropped
        self.counters.dropped_ever += dropped
        if not isinstance(error, StorageError):
            self.counters.commits += 1
            self.counters.last_commit = time.time()
            if dropped:
                self._unlogged_drops += dropped
                self._last_drop = time.monotonic()
                if self._rate_limited.warning(  # every commit drops during a long outage
                    "drop_oldest", _DROPPED, **self._drops_logged()
                ):
                    self._unlogged_drops = 0
            elif self._drops_quiet_in() == 0.0:
                self._log_the_last_drops()
        if isinstance(error, BufferFull):
            self.counters.rejected += len(entries)
        chunk = chunk_of(first_seq, accepted, entries) if added else None
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._settle, puts, error, chunk, dropped_through)

    def _settle(
        self,
        puts: list[_Put],
        error: BaseException | None,
        chunk: Chunk | None,
        dropped_through: int = 0,
    ) -> None:
        for put in puts:
            if put.future.done():
                continue
            if error is None:
                put.future.set_result(None)
            else:
                put.future.set_exception(error)
        self._forget(dropped_through)  # dropped is gone: not to be published from memory either
        if chunk is not None:
            self._remember(chunk)
            self._committed.set()

    def _forget(self, through_seq: int) -> None:
        recent = self._recent
        while recent and recent[0].readings[-1].seq <= through_seq:
            self._recent_readings -= len(recent.popleft().readings)

    def _remember(self, chunk: Chunk) -> None:
        recent = self._recent
        if recent and recent[-1].readings[-1].seq + 1 != chunk.first_seq:
            recent.clear()  # a gap (a commit failed in between): keep only what is contiguous
            self._recent_readings = 0
        recent.append(chunk)
        self._recent_readings += len(chunk.readings)
        while self._recent_readings > _RECENT_READINGS and len(recent) > 1:
            self._recent_readings -= len(recent.popleft().readings)

    def _set_aside_now(self, conn: sqlite3.Connection, first_seqs: list[int]) -> None:
        try:
            self._begin(conn)
            for first_seq in first_seqs:
                row = conn.execute(
                    "SELECT count FROM chunks WHERE first_seq=?", (first_seq,)
                ).fetchone()
                if row is None:
                    continue
                conn.execute(
                    "INSERT INTO damaged SELECT * FROM chunks WHERE first_seq=?", (first_seq,)
                )
                conn.execute("DELETE FROM chunks WHERE first_seq=?", (first_seq,))
                self._depth -= row[0]
                self.counters.damaged += 1
            self._save_next_seq(conn)
            self._commit_transaction(conn)
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self._storage_error(exc)

    def _begin(self, conn: sqlite3.Connection) -> None:
        """Start a write; until one has committed, it also marks the file as in use (not
        closed cleanly). Not at the open: a full disk must not keep the gateway from starting
        and publishing what it holds; a file this process never wrote needs no check."""
        conn.execute("BEGIN IMMEDIATE")
        if not self._marked_in_use:
            conn.execute("INSERT OR REPLACE INTO meta VALUES ('clean', '0')")

    def _commit_transaction(self, conn: sqlite3.Connection) -> None:
        conn.execute("COMMIT")
        self._marked_in_use = True

    def _delete_alone(self, conn: sqlite3.Connection, acks: list[int], retry_acks: bool) -> int:
        """The deletes of a commit that failed for a full disk, on their own: they need little
        room and free some. Else every byte freed on the disk would go to new readings first,
        and nothing the broker confirmed would ever be deleted."""
        try:
            self._begin(conn)
            deleted = self._delete(conn, acks)
            self._save_next_seq(conn)
            self._commit_transaction(conn)
        except sqlite3.Error:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if retry_acks:
                with self._cond:
                    self._state.acks.extend(acks)
            return 0
        return deleted

    def _delete(self, conn: sqlite3.Connection, acks: list[int]) -> int:
        placeholders = ",".join("?" * len(acks))
        deleted: int = conn.execute(
            f"SELECT coalesce(sum(count), 0) FROM chunks WHERE first_seq IN ({placeholders})",
            acks,
        ).fetchone()[0]
        conn.execute(f"DELETE FROM chunks WHERE first_seq IN ({placeholders})", acks)
        return deleted

    def _save_next_seq(self, conn: sqlite3.Connection) -> None:
        """Ids must not restart at 1 when the table empties: remember where they are.

        Called once in every transaction that deletes chunks.
        """
        conn.execute("INSERT OR REPLACE INTO meta VALUES ('next_seq', ?)", (str(self._next_seq),))

    def _make_room(self, conn: sqlite3.Connection, size: int, full: str | None) -> tuple[int, int]:
        """Apply `when_full` so that a chunk of `size` bytes fits; `full` is why it does not
        now (`_full_for`), None when it does.

        Returns the readings dropped and the highest seq among them (0: none).
        """
        dropped = through = 0
        while full is not None:
            row = conn.execute(
                "SELECT first_seq, count FROM chunks ORDER BY first_seq LIMIT 1"
            ).fetchone()
            if row is None:
                # Nothing left to make room with: take it anyway, or a source that must not
                # drop it (MQTT unacked) would offer it again for ever.
                break
            if self.when_full == "reject_new":
                raise BufferFull(
                    f"{full}; new readings are refused until the broker takes some "
                    "(when_full: reject_new)"
                )
            conn.execute("DELETE FROM chunks WHERE first_seq = ?", (row[0],))
            dropped += row[1]
            through = row[0] + row[1] - 1
            full = self._full_for(conn, size)
        return dropped, through

    def _full_for(self, conn: sqlite3.Connection, size: int) -> str | None:
        """Why a chunk of `size` bytes does not fit, or None: over `max_bytes`, or more than
        the disk can take while `_DISK_RESERVE` stays free (free pages take it first)."""
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        free = conn.execute("PRAGMA freelist_count").fetchone()[0] * self._page_size
        if pages * self._page_size - free + size > self.max_bytes:
            return f"buffer {self.path} is full (max_bytes {self.max_bytes})"
        disk = os.statvfs(self.path.parent)
        left = disk.f_bavail * disk.f_frsize
        if size - free > left - _DISK_RESERVE:
            return (
                f"buffer {self.path} is full: its disk has {left // 1024} KiB left, and "
                f"{_DISK_RESERVE // 1024} KiB stay free for the buffer's own deletes; free "
                "disk space, or lower buffer.max_bytes to what the disk can hold"
            )
        return None

    def _storage_error(self, exc: Exception) -> StorageError:
        code = getattr(exc, "sqlite_errorname", "")
        if _is_disk_full(exc):
            self._rate_limited.error(
                "disk-full",
                "disk full: readings are not accepted until space is freed",
                path=str(self.path),
                hint="free space on the disk or lower buffer.max_bytes",
            )
            return StorageError(f"disk full writing {self.path}; free space on the disk")
        failure = StorageError(
            f"buffer {self.path} failed ({code or 'error'}: {exc}); the gateway stops so "
            "that systemd restarts it on a known-good state"
        )
        log.critical(
            "buffer storage failed; the gateway stops and systemd restarts it",
            path=str(self.path),
            error=str(exc),
            code=code,
            hint="check the disk (dmesg for I/O errors); a damaged file is moved aside at start",
        )
        self._fail(failure)
        return failure

    def _fail(self, failure: StorageError) -> None:
        """From any thread: refuse further puts, and wake `wait_failed()` (the gateway stops)."""
        self._failure = failure
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._failed.set)
