"""When the autopilot re-anchors a live channel (issue 23, docs/design/reanchoring.md): the
policies' rules for its keys, and the pure decisions each side's service asks before it
acts. The client tops up when its money runs low (`refill_below`, up to `refill_to`, never
depositing more than `max_deposit` in all) and renews near the expiry (`renew_before`); the
server quotes a payout once it earned `payout_above` and a renewal near the expiry."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from bitcoind_paychan.bitcoin.tx import Transaction
from bitcoind_paychan.channel.contract import DUST
from bitcoind_paychan.channel.reanchor import REANCHOR_LEAD
from bitcoind_paychan.channel.records import ChannelRecord
from bitcoind_paychan.errors import PolicyError


class ClientKeys(Protocol):
    """ClientPolicy's keys read here (a Protocol: this module imports no machine)."""

    @property
    def value(self) -> int: ...
    @property
    def time_window(self) -> int: ...
    @property
    def reanchoring(self) -> bool: ...
    @property
    def refill_below(self) -> int: ...
    @property
    def refill_to(self) -> int: ...
    @property
    def max_deposit(self) -> int: ...
    @property
    def renew_before(self) -> int: ...


class ServerKeys(Protocol):
    """ServerPolicy's keys read here."""

    @property
    def min_time_window(self) -> int: ...
    @property
    def settle_margin(self) -> int: ...
    @property
    def reanchoring(self) -> bool: ...
    @property
    def payout_above(self) -> int: ...
    @property
    def renew_before(self) -> int: ...


def _not_negative(policy: object, *names: str) -> None:
    for name in names:
        if getattr(policy, name) < 0:
            raise PolicyError(name, f"found {getattr(policy, name)}, expected an integer ≥ 0 "
                                    "(0: off)")


def check_client(policy: ClientKeys) -> None:
    """The client's autopilot keys make sense together (PolicyError naming the key)."""
    _not_negative(policy, "refill_below", "refill_to", "max_deposit", "renew_before")
    if policy.refill_below:
        target = policy.refill_to
        if not policy.max_deposit:
            raise PolicyError("max_deposit", "found 0 beside refill_below, expected the most "
                                             "sat the channel may ever be funded with (what "
                                             "it opened with plus every top-up)")
        if target and target <= policy.refill_below:
            raise PolicyError("refill_to", f"found {target}, expected more than refill_below "
                                           f"({policy.refill_below})")
        if target > policy.max_deposit:
            raise PolicyError("refill_to", f"found {target}, expected at most max_deposit "
                                           f"({policy.max_deposit})")
    if policy.renew_before >= policy.time_window:
        raise PolicyError("renew_before", f"found {policy.renew_before}, expected less than "
                                          f"time_window ({policy.time_window} s), else every "
                                          "renewal would be due at once")
    if (policy.refill_below or policy.renew_before) and not policy.reanchoring:
        raise PolicyError("reanchoring", "found false beside refill_below or renew_before, "
                                         "expected true: the autopilot re-anchors")


def check_server(policy: ServerKeys) -> None:
    """The server's autopilot keys make sense together (PolicyError naming the key)."""
    _not_negative(policy, "payout_above", "renew_before")
    if policy.payout_above and policy.payout_above < DUST:
        raise PolicyError("payout_above", f"found {policy.payout_above}, expected 0 (off) or "
                                          f"at least {DUST} sat (dust)")
    soonest = policy.settle_margin + REANCHOR_LEAD
    if policy.renew_before and not soonest < policy.renew_before < policy.min_time_window:
        raise PolicyError("renew_before", f"found {policy.renew_before}, expected more than "
                                          f"{soonest} s (the settle margin plus an hour for R "
                                          "to confirm) and less than min_time_window "
                                          f"({policy.min_time_window} s, the renewal's window)")
    if (policy.payout_above or policy.renew_before) and not policy.reanchoring:
        raise PolicyError("reanchoring", "found false beside payout_above or renew_before, "
                                         "expected true: the autopilot re-anchors")


class GenerationValues(Protocol):
    """What a superseded generation says of the money (store.Generation): its contract's
    value, R's gross payout."""

    @property
    def value(self) -> int: ...
    @property
    def payout(self) -> int: ...


def deposited(record: ChannelRecord, generations: Sequence[GenerationValues]) -> int:
    """Sat the client ever funded the channel with: its first contract's value plus every
    top-up (a re-anchor with a top-up has V' = V + U − P; without one V' ≤ V − P)."""
    values = [g.value for g in generations] + [record.contract.value]
    total = values[0]
    for generation, after in zip(generations, values[1:], strict=True):
        total += max(0, after - generation.value + generation.payout)
    return total


def client_wish(policy: ClientKeys, record: ChannelRecord, now: int, funded: int
                ) -> tuple[int, int] | None:
    """(top-up, time window) the client's autopilot asks for now, or None. `funded`: what
    `deposited` says of the channel."""
    if not policy.reanchoring or record.pending is not None:
        return None
    renew = bool(policy.renew_before) and record.contract.expiry - now <= policy.renew_before
    top_up = 0
    # Due below refill_below; with a renewal due anyway, whatever brings it to refill_to
    # rides along (one transaction instead of two).
    if policy.refill_below and (record.change < policy.refill_below or renew):
        target = policy.refill_to or policy.value
        top_up = min(target - record.change, policy.max_deposit - funded)
        top_up = top_up if top_up >= DUST else 0
    window = policy.time_window if renew else 0
    return (top_up, window) if top_up or window else None


def server_wish(policy: ServerKeys, record: ChannelRecord, acked_change: int, now: int
                ) -> tuple[bool, int] | None:
    """(pay out, time window) the server's autopilot quotes now unasked, or None: a payout
    once the client acknowledged `payout_above` sat on the contract, a renewal within
    `renew_before` of its expiry (while R can still confirm before the server would settle)."""
    if not policy.reanchoring or record.pending is not None:
        return None
    left = record.contract.expiry - now
    if left <= policy.settle_margin + REANCHOR_LEAD:
        return None  # too late: the server settles instead
    payout = bool(policy.payout_above) and (
        record.contract.value - acked_change >= policy.payout_above)
    renew = bool(policy.renew_before) and left <= policy.renew_before
    if not payout and not renew:
        return None
    return payout, policy.min_time_window if renew else 0


def kinds(record: ChannelRecord) -> tuple[str, ...]:
    """What the pending re-anchor of `record` does: topup, payout and/or renewal."""
    pending = record.pending
    if pending is None:
        return ()
    inputs = len(Transaction.parse(pending.tx).inputs)
    return tuple(kind for kind, does in (
        ("topup", inputs > 1), ("payout", pending.payout > 0),
        ("renewal", pending.contract.expiry != record.contract.expiry)) if does)
