"""Whether the system clock is synchronised: a Raspberry Pi has no battery-backed clock.

After a boot without network, a Pi's clock resumes from the last saved time (fake-hwclock
or systemd-timesyncd's clock file) until NTP corrects it: readings taken meanwhile carry a
wrong `ts`. The kernel knows whether a time daemon has synchronised it: `adjtimex(2)`
returns `TIME_ERROR` while the clock is unsynchronised (STA_UNSYNC set). That is what
`timedatectl`'s "System clock synchronized" shows, and it works with systemd-timesyncd,
chrony and ntpd alike, whereas `/run/systemd/timesync/synchronized` exists only with
systemd-timesyncd.
"""

from __future__ import annotations

import ctypes
import math
import os
import sys
import time

import structlog

log = structlog.get_logger("gateway.clock")

_TIME_ERROR = 5
_TIMEX_SIZE = 256  # struct timex is 208 bytes on 64-bit Linux; room to spare
_libc = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None
_ASK_EVERY_S = 1.0
"""The buffer asks on every put, hundreds of times a second; the answer changes once a boot."""
_asked_at = -math.inf
_answer = True
_refused_logged = False


def system_clock_synchronized() -> bool:
    """True unless the kernel said the clock is unsynchronised, at most a second ago.

    Off Linux, or where `adjtimex` is not permitted, it answers True: the flag is for
    clocks known to be wrong, not for clocks we cannot ask about.
    """
    global _asked_at, _answer
    now = time.monotonic()
    if now - _asked_at >= _ASK_EVERY_S:
        _asked_at, _answer = now, _ask_the_kernel()
    return _answer


def _ask_the_kernel() -> bool:
    global _refused_logged
    if _libc is None:
        return True
    timex = ctypes.create_string_buffer(_TIMEX_SIZE)  # modes = 0: read only, no privilege
    state = _libc.adjtimex(timex)
    if state == -1 and not _refused_logged:
        _refused_logged = True
        log.warning(
            "cannot ask the kernel whether the clock is synchronised; readings are not flagged",
            error=os.strerror(ctypes.get_errno()),
            hint="a seccomp filter refuses adjtimex: allow clock_adjtime (see the systemd unit)",
        )
    return bool(state != _TIME_ERROR)
