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
import sys

_TIME_ERROR = 5
_TIMEX_SIZE = 256  # struct timex is 208 bytes on 64-bit Linux; room to spare
_libc = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None


def system_clock_synchronized() -> bool:
    """True unless the kernel says the clock is unsynchronised (one read-only syscall).

    Off Linux, or where `adjtimex` is not permitted, it answers True: the flag is for
    clocks known to be wrong, not for clocks we cannot ask about.
    """
    if _libc is None:
        return True
    timex = ctypes.create_string_buffer(_TIMEX_SIZE)  # modes = 0: read only, no privilege
    return bool(_libc.adjtimex(timex) != _TIME_ERROR)
