"""How the control API shows what it answers: a channel as a row (live or forgotten),
a payment's info as text, an instant given on the command line."""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict
from typing import Any

from bitcoind_paychan.errors import InvalidParameter
from bitcoind_paychan.service.watcher import ChannelView
from bitcoind_paychan.store import ChannelSummary


def channel_row(found: ChannelView | ChannelSummary) -> dict[str, Any]:
    return live_row(found) if isinstance(found, ChannelView) else forgotten_row(found)


def live_row(view: ChannelView) -> dict[str, Any]:
    return asdict(view) | {"forgotten": False}


def forgotten_row(summary: ChannelSummary) -> dict[str, Any]:
    """A forgotten channel's summary, in the keys of a stored channel's view where they fit."""
    row = asdict(summary)
    del row["contract_tx"], row["closing_tx"]  # on chain; ask the node for them by txid
    return row | {"role": summary.role.value, "status": summary.status.value,
                  "change": summary.value - summary.paid, "deadline": None,
                  "contract_confirmations": None, "closing_confirmations": None,
                  "forgotten": True}


def instant(text: str, what: str = "prunehistory") -> int:
    """Unix seconds of `2026-01-31`, `2026-01-31T12:00` (UTC unless it says) or `1767225600`."""
    if text.isdigit():
        return int(text)
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise InvalidParameter(f"{what}: {text!r} is not a date; give YYYY-MM-DD, "
                               "YYYY-MM-DDTHH:MM or Unix seconds") from None
    return int((when if when.tzinfo else when.replace(tzinfo=dt.UTC)).timestamp())


def payment_text(info: bytes) -> str | None:
    """Payment info as text when it is printable UTF-8 (it is application data)."""
    try:
        text = info.decode()
    except UnicodeDecodeError:
        return None
    return text if text.isprintable() else None
