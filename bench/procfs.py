"""What the kernel says about a process: CPU time, disk writes, memory; and fsyncs via strace."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
SYNC_CALLS = ("fsync", "fdatasync", "sync_file_range", "syncfs", "msync")


@dataclass(frozen=True, slots=True)
class ProcSample:
    """Counters of one process (all its threads) at one instant."""

    at: float
    """time.monotonic() when read."""
    cpu_s: float
    """utime + stime, seconds."""
    write_bytes: int
    """Bytes this process caused to be written to storage (page-cache pages it dirtied)."""
    cancelled_write_bytes: int
    """Of those, bytes never written after all (the file was truncated or deleted first)."""
    read_bytes: int


def sample(pid: int) -> ProcSample:
    at = time.monotonic()
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
    cpu = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime: fields 14, 15
    io = dict(
        line.split(": ", 1) for line in Path(f"/proc/{pid}/io").read_text().splitlines() if line
    )
    return ProcSample(
        at,
        cpu,
        int(io["write_bytes"]),
        int(io["cancelled_write_bytes"]),
        int(io["read_bytes"]),
    )


def memory_kib(pid: int) -> dict[str, int]:
    """VmHWM (peak resident set) and VmRSS of a running process, in KiB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            out[key] = int(value.split()[0])
    return out


@dataclass(frozen=True, slots=True)
class MachineSample:
    """Whole-machine CPU counters from /proc/stat (all cores), in seconds."""

    at: float
    busy_s: float
    total_s: float


def machine() -> MachineSample:
    at = time.monotonic()
    cpu = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    ticks = [int(x) for x in cpu[:8]]  # user nice system idle iowait irq softirq steal
    idle = ticks[3] + ticks[4]
    return MachineSample(at, (sum(ticks) - idle) / CLOCK_TICKS, sum(ticks) / CLOCK_TICKS)


class SyscallCounter:
    """`strace -f -c` attached to a running process, counting the fsync family only.

    strace still stops every thread at every system call (it cannot filter in the kernel when
    attaching to a running process), so the traced process runs slower meanwhile: measure CPU
    and latency in a window without it, and use this window for the count alone."""

    def __init__(self, pid: int, output: Path) -> None:
        exe = shutil.which("strace") or "/usr/bin/strace"
        self.output = output
        self.started = time.monotonic()
        trace = "trace=" + ",".join(SYNC_CALLS)
        self._proc = subprocess.Popen(
            [exe, "-f", "-c", "-qq", "-e", trace, "-o", str(output), "-p", str(pid)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self.stopped = self.started

    @staticmethod
    def available() -> bool:
        return shutil.which("strace") is not None or Path("/usr/bin/strace").exists()

    def stop(self) -> dict[str, int]:
        """Detach (SIGINT: strace writes its summary) and return calls per system call."""
        self.stopped = time.monotonic()
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGINT)
        try:
            _, err = self._proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            _, err = self._proc.communicate()
        if self._proc.returncode not in (0, -signal.SIGINT) and not self.output.exists():
            raise RuntimeError(f"strace failed: {err.decode(errors='replace')[-500:]}")
        return parse_strace_summary(self.output.read_text())

    @property
    def elapsed(self) -> float:
        return self.stopped - self.started


def parse_strace_summary(text: str) -> dict[str, int]:
    """Calls per system call from `strace -c` output (columns: % time, seconds, usecs/call,
    calls, [errors], syscall)."""
    counts = {name: 0 for name in SYNC_CALLS}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 5 and parts[-1] in counts and parts[3].isdigit():
            counts[parts[-1]] = int(parts[3])
    return counts
