"""Under systemd, every log line starts with its syslog priority, for `journalctl -p`; and a
library's line is rendered as ours are, its traceback included."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

CHILD = """
import logging, structlog
from gateway.logs import configure_logging
configure_logging("info", "json")
log = structlog.get_logger("t")
log.info("fine")
log.warning("careful", hint="do this")
log.error("broken")
logging.getLogger("some.library").error("from a library")
try:
    1 / 0
except ZeroDivisionError:
    logging.getLogger("asyncio").error("Exception in callback", exc_info=True)
"""


def _run(tmp_path: Path, journal: bool) -> list[str]:
    out = tmp_path / "stdout"
    out.touch()
    stat = out.stat()
    env = {**os.environ, "JOURNAL_STREAM": f"{stat.st_dev}:{stat.st_ino}" if journal else "1:2"}
    with out.open("w") as stdout:
        subprocess.run([sys.executable, "-c", CHILD], stdout=stdout, env=env, check=True)
    return out.read_text().splitlines()


def test_lines_to_the_journal_start_with_their_priority(tmp_path: Path) -> None:
    lines = _run(tmp_path, journal=True)
    assert [line[:3] for line in lines] == ["<6>", "<4>", "<3>", "<3>", "<3>"]
    assert json.loads(lines[1][3:])["hint"] == "do this"  # the rest is the JSON line


def test_lines_elsewhere_are_plain(tmp_path: Path) -> None:
    lines = _run(tmp_path, journal=False)  # $JOURNAL_STREAM names another stream
    assert [json.loads(line)["event"] for line in lines] == [
        "fine",
        "careful",
        "broken",
        "from a library",
        "Exception in callback",
    ]
    traceback = json.loads(lines[-1])["exception"]  # was a repr of the exc_info tuple
    assert traceback.startswith("Traceback (most recent call last):")
    assert traceback.endswith("ZeroDivisionError: division by zero")
