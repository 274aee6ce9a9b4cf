"""ARCHITECTURE.md's lifecycle tables against the machines' TABLEs: every state has its row
(named by its value) and each row names every event its TABLE allows in that state."""

from __future__ import annotations

import enum
import re
from pathlib import Path

import pytest

from bitcoind_paychan.channel import client, server
from bitcoind_paychan.channel.machine import Input, Table, event_name

DOC = Path(__file__).parents[2] / "ARCHITECTURE.md"


def documented(side: str) -> dict[str, str]:
    """The lifecycle table of `side` (client or server): state → its events cell."""
    text = DOC.read_text()
    start = text.index(f"| {side} state | event → next |")
    rows: dict[str, str] = {}
    for line in text[start:].splitlines()[2:]:
        if not line.startswith("|"):
            break
        state, events = (cell.strip() for cell in line.strip("|").split(" | ", 1))
        assert state not in rows, f"{side} state {state!r} has two rows"
        rows[state] = events
    return rows


def spoken(event: Input | int) -> str:
    """How the doc names an event: a message type as is, an input in words."""
    return event.value.replace("_", " ") if isinstance(event, Input) else event_name(event)


@pytest.mark.parametrize(("side", "table", "states"), [
    ("client", client.TABLE, client.ClientState), ("server", server.TABLE, server.ServerState)])
def test_the_lifecycle_tables_name_every_state_and_event_of_the_machines(
        side: str, table: Table, states: type[enum.Enum]) -> None:
    rows = documented(side)
    assert sorted(rows) == sorted(state.value for state in states)
    for (state, event), _ in table.items():
        if event is Input.CONNECTION_LOST:
            continue  # every state's, added by `table`
        assert re.search(rf"\b{re.escape(spoken(event))}\b", rows[state.value]), (
            f"ARCHITECTURE.md's {side} row {state.value!r} does not name {spoken(event)!r}")
