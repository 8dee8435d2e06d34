"""A buffer's commits held in its writer thread, to cancel a put while its commit runs."""

from __future__ import annotations

import threading
from typing import Any, NamedTuple

import pytest

from gateway.buffer import Buffer


class CommitHold(NamedTuple):
    """`begun` is set when a held commit starts; it goes on once `finish` is set (at most
    10 s later)."""

    begun: threading.Event
    finish: threading.Event


def hold_commits(buffer: Buffer, monkeypatch: pytest.MonkeyPatch) -> CommitHold:
    """Hold `buffer`'s commits from now on (until `monkeypatch` is undone)."""
    held = CommitHold(threading.Event(), threading.Event())
    commit = buffer._commit

    def held_commit(*args: Any, **kwargs: Any) -> Any:
        held.begun.set()
        held.finish.wait(10)
        return commit(*args, **kwargs)

    monkeypatch.setattr(buffer, "_commit", held_commit)
    return held
