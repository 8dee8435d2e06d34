"""`edge-gateway status` before the gateway ever ran: it says which of two things is wrong."""

from __future__ import annotations

from pathlib import Path

from gateway.status import format_status, read_status


def test_a_state_dir_that_does_not_exist_is_named() -> None:
    shown = format_status(read_status(Path("/nonexistent/edge-gateway-state")))
    assert "/nonexistent/edge-gateway-state does not exist: check gateway.state_dir" in shown
    assert "gateway    no status file: the gateway has not run here" in shown


def test_an_empty_state_dir_has_no_buffer_yet(tmp_path: Path) -> None:
    shown = format_status(read_status(tmp_path))
    assert "no buffer yet (the gateway has not run with this state_dir)" in shown
