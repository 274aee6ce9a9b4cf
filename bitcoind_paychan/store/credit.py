"""The gateway's credit in the store: what a server channel's client paid and the gateway has
not yet charged, shared by every instance on the store and surviving a restart.

Credit is derived, never copied: a channel's credit is what its stored payments paid (the
contract's value less the client's stored change) less what the gateway took of it (the
`credit_spent` table, schema version 6). So a payment is credit the moment it is durably
stored, in the same transaction, and a restart loses none. Taking credit reads and raises
`spent` under the row's lock in one transaction, so two requests (of one instance or of two
on one PostgreSQL) never take the same sat twice. A forgotten channel's row goes with it.

A take may also ride with a payment (`PaymentTake`): made in the transaction that stores the
payment, right after it, so a paid request costs the gateway one commit, not two. The
gateway names it in `WITH_PAYMENT` (a context variable) around the exchange that stores the
payment; the payment writer (writer.py) attaches it to that payment.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from bitcoind_paychan.channel.records import ChannelRecord, Role

if TYPE_CHECKING:
    from bitcoind_paychan.errors import StoreError
    from bitcoind_paychan.store.base import Payment
    from bitcoind_paychan.store.sql import Session

SERVER = Role.SERVER.value
_KEY = "role = ? AND contract_txid = ?"
# The channel's row of credit_spent, made on first use (only for a stored channel).
ENSURE = ("INSERT INTO credit_spent (role, contract_txid, spent) SELECT role, contract_txid, "
          f"0 FROM channels WHERE {_KEY} ON CONFLICT DO NOTHING")
SPENT = f"SELECT spent FROM credit_spent WHERE {_KEY}"
# What the channel's client paid in its life: the current contract's value less the stored
# change, plus the payout of every re-anchor it went through (a re-anchor paying P out
# leaves the next contract P less paid: reanchoring.md 1), so a re-anchor moves no credit.
_PAID = ("c.value - c.change + coalesce((SELECT sum(g.payout) FROM generations AS g "
         "WHERE g.role = c.role AND g.channel_id = c.contract_txid), 0)")
PAID = f"SELECT {_PAID} FROM channels AS c WHERE c.role = ? AND c.contract_txid = ?"
SPEND = f"UPDATE credit_spent SET spent = spent + ? WHERE {_KEY}"
BALANCE = (f"SELECT {_PAID} - coalesce(s.spent, 0) FROM channels AS c LEFT JOIN "
           "credit_spent AS s ON s.role = c.role AND s.contract_txid = c.contract_txid "
           "WHERE c.role = ? AND c.contract_txid = ?")


@runtime_checkable
class CreditStore(Protocol):
    """A store that keeps the gateway's credit (SQLite, PostgreSQL, memory)."""

    def credit(self, contract_txid: str) -> int:
        """The server channel's credit: paid, less what was taken (0: no such channel)."""
        ...

    def take_credit(self, contract_txid: str, least: int, most: int) -> int | None:
        """Take up to `most` sat of the channel's credit if it holds at least `least`: the
        sat taken, or None (nothing taken)."""
        ...

    def take_credit_left(self, contract_txid: str, least: int, most: int
                         ) -> tuple[int | None, int]:
        """`take_credit`, and the credit left after it (read in the same transaction)."""
        ...

    def take_credits(self, takes: Sequence[Take]) -> list[tuple[int | None, int]]:
        """Each take of `takes` (channel, least, most) in turn, all in one transaction (one
        commit: the gateway's group commit); `take_credit_left`'s answer for each."""
        ...

    def give_credit(self, contract_txid: str, sat: int) -> None:
        """Give back `sat` taken and not charged."""
        ...


Take = tuple[str, int, int]  # (contract txid, least, most)


@runtime_checkable
class TakesAtOnce(Protocol):
    """A store one process owns whose commit of takes costs no fsync (SQLite, memory): the
    gateway commits a take on its event loop when the store is free at once."""

    def take_credits_now(self, takes: Sequence[Take]) -> list[tuple[int | None, int]] | None:
        """`take_credits`, if no other write holds the store (None: nothing was done)."""
        ...


@runtime_checkable
class TakingStore(Protocol):
    """A store whose group commit of payments also makes their takes of credit (SQLite,
    PostgreSQL, memory)."""

    def record_payments(self, batch: Sequence[Payment],
                        takes: Sequence[PaymentTake | None] = ()) -> list[StoreError | None]:
        """`ChannelStore.record_payments`; each stored payment's take (`takes`, by position)
        made in the same transaction, right after it."""
        ...


@dataclass
class PaymentTake:
    """A take of credit (`least` to `most` sat) to make in the transaction that stores a
    payment of `channel`, right after it; none if the payment is refused. `answer`: (taken
    or None, credit left), set once the commit holding both is durable."""

    least: int
    most: int
    channel: str  # the channel whose payment it rides with
    contract_txid: str = ""  # set as it is attached to that payment
    answer: tuple[int | None, int] | None = None
    closed: bool = False  # set once the exchange is over: nothing attaches any more

    def __post_init__(self) -> None:
        check_takes([self.take()])  # a bad take never fails the payment's transaction

    def take(self) -> Take:
        return (self.contract_txid, self.least, self.most)


# The take to make with the next payment stored in this context (the gateway's request).
WITH_PAYMENT: contextvars.ContextVar[PaymentTake | None] = contextvars.ContextVar(
    "WITH_PAYMENT", default=None)


def attach(record: ChannelRecord) -> PaymentTake | None:
    """The take waiting (in this context) for a payment of a server channel, now attached
    to the payment `record` stores (once: a second payment gets none)."""
    take = WITH_PAYMENT.get()
    if take is None or take.closed or take.contract_txid or \
            Role(record.role) is not Role.SERVER or record.channel_id != take.channel:
        return None
    take.contract_txid = record.channel_id
    return take


def taken_after(outcomes: Sequence[object], takes: Sequence[PaymentTake | None],
                take_one: Callable[[Take], tuple[int | None, int]]) -> None:
    """Make each stored payment's take (its outcome None), in the payment's transaction."""
    for outcome, take in zip(outcomes, takes, strict=False):
        if take is not None and outcome is None:
            take.answer = take_one(take.take())


def check_takes(takes: Sequence[Take]) -> None:
    """ValueError for a take no credit could answer (before a transaction begins)."""
    for _, least, most in takes:
        if least < 0 or most < least:
            raise ValueError(f"take {least} to {most} sat of credit: expected 0 <= least <= "
                             "most")


def taking(paid: int, spent: int, least: int, most: int) -> int | None:
    """What a take of (`least`, `most`) gets of a credit of `paid` less `spent`."""
    check_takes([("", least, most)])
    credit = paid - spent
    return None if credit < least else min(credit, most)


def given(spent: int, sat: int, contract_txid: str) -> int:
    """`spent` once `sat` is given back."""
    if not 0 <= sat <= spent:
        raise ValueError(f"channel {contract_txid}: {sat} sat given back, but {spent} were "
                         "taken: a request is never charged more than it held")
    return spent - sat


class TakesOne:
    """`take_credit` and `take_credit_left`, each one take of an engine's `take_credits`."""

    def take_credits(self, takes: Sequence[Take]) -> list[tuple[int | None, int]]:
        raise NotImplementedError

    def take_credit(self, contract_txid: str, least: int, most: int) -> int | None:
        return self.take_credit_left(contract_txid, least, most)[0]

    def take_credit_left(self, contract_txid: str, least: int, most: int
                         ) -> tuple[int | None, int]:
        return self.take_credits([(contract_txid, least, most)])[0]


class SQLCredit(TakesOne):
    """CreditStore in SQL, for SQLStore (whose `_transaction` and `_connection` it uses)."""

    _FOR_UPDATE = ""

    def _connection(self, what: str) -> AbstractContextManager[Session]:
        raise NotImplementedError

    def _transaction(self, what: str) -> AbstractContextManager[Session]:
        raise NotImplementedError

    def _take_transaction(self, what: str) -> AbstractContextManager[Session]:
        """The transaction of a batch of takes (SQLite: not fsynced, see its store)."""
        return self._transaction(what)

    def credit(self, contract_txid: str) -> int:
        with self._connection(f"read channel {contract_txid}'s credit") as conn:
            row = conn.execute(BALANCE, (SERVER, contract_txid)).fetchone()
        return 0 if row is None else max(int(row[0]), 0)

    def take_credits(self, takes: Sequence[Take]) -> list[tuple[int | None, int]]:
        check_takes(takes)
        answers: dict[int, tuple[int | None, int]] = {}
        # Rows locked in channel order (a channel's takes keep theirs): two instances'
        # batches never wait for each other in a cycle.
        order = sorted(range(len(takes)), key=lambda index: takes[index][0])
        channels = sorted({txid for txid, _, _ in takes})
        named = ", ".join(channels[:3]) + (f" and {len(channels) - 3} more" if
                                           len(channels) > 3 else "")
        with self._take_transaction(f"take the credit of channel {named}") as conn:
            for index in order:
                answers[index] = self._take(conn, *takes[index])
        return [answers[index] for index in range(len(takes))]

    def _takes_after(self, conn: Session, outcomes: Sequence[object],
                     takes: Sequence[PaymentTake | None]) -> None:
        """The takes of the payments just stored in `conn`'s transaction (`taken_after`)."""
        taken_after(outcomes, takes, lambda take: self._take(conn, *take))

    def _take(self, conn: Session, contract_txid: str, least: int, most: int
              ) -> tuple[int | None, int]:
        key = (SERVER, contract_txid)
        conn.execute(ENSURE, key)
        row = conn.execute(f"{SPENT}{self._FOR_UPDATE}", key).fetchone()
        if row is None:  # no such channel: no credit
            return taking(0, 0, least, most), 0
        spent = int(row[0])
        paid = int(conn.execute(PAID, key).fetchone()[0])  # read once the row is locked
        self._credit_read(contract_txid)
        taken = taking(paid, spent, least, most)
        if taken:
            conn.execute(SPEND, (taken, *key))
        return taken, max(paid - spent - (taken or 0), 0)

    def give_credit(self, contract_txid: str, sat: int) -> None:
        if not sat:
            return
        key = (SERVER, contract_txid)
        with self._transaction(f"give back channel {contract_txid}'s credit") as conn:
            row = conn.execute(f"{SPENT}{self._FOR_UPDATE}", key).fetchone()
            if row is None:  # the channel was forgotten meanwhile: nothing left to credit
                return
            given(int(row[0]), sat, contract_txid)
            conn.execute(SPEND, (-sat, *key))

    def _credit_read(self, contract_txid: str) -> None:
        """Called inside `take_credit` once the balance is read under its lock (tests hold
        an instance here to drive races)."""
