"""The ledger decides takes of credit at once against a lower bound: it never decides a take
the store would refuse, whatever the order of commits on the takes' thread and the payment
writer's, and of their answers."""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from bitcoind_paychan.gateway.ledger import Ledger
from bitcoind_paychan.store.credit import taking

CHANNEL = "c" * 64
EVERYTHING = 10**18
_FAILS = st.sampled_from([False] * 7 + [True])  # a commit fails now and then


def test_the_bound_is_unknown_until_the_store_decides_a_take() -> None:
    ledger = Ledger()
    assert ledger.bound(CHANNEL) is None and not ledger.decide(CHANNEL, 1)
    ledger.store_decides(CHANNEL)
    assert ledger.bound(CHANNEL) is None  # still deciding
    ledger.answered(CHANNEL, 1_000, decided=False)
    assert ledger.bound(CHANNEL) == 1_000


def known(credit: int) -> Ledger:
    """A ledger whose channel's credit the store answered once: `credit`."""
    ledger = Ledger()
    ledger.store_decides(CHANNEL)
    ledger.answered(CHANNEL, credit, decided=False)
    return ledger


def test_takes_decided_lower_the_bound_until_their_answers_bring_the_stores_figure() -> None:
    ledger = known(300)
    assert ledger.decide(CHANNEL, 100) and ledger.decide(CHANNEL, 100)
    assert ledger.bound(CHANNEL) == 100 and not ledger.may_ride(CHANNEL)
    assert not ledger.decide(CHANNEL, 101)  # short: the store must decide it
    ledger.answered(CHANNEL, 700, decided=True)  # a payment of 500 came in meanwhile
    assert ledger.bound(CHANNEL) == 600  # 700 less the second take, not yet answered
    ledger.answered(CHANNEL, 600, decided=True)
    assert ledger.bound(CHANNEL) == 600 and ledger.may_ride(CHANNEL)


def test_while_the_store_decides_nothing_is_decided_and_then_the_lowest_answer_counts(
        ) -> None:
    ledger = known(1_000)
    ledger.store_decides(CHANNEL)  # a take riding with a payment
    ledger.store_decides(CHANNEL)  # a take of all the credit, on the takes' thread
    assert ledger.bound(CHANNEL) is None and not ledger.decide(CHANNEL, 1)
    ledger.answered(CHANNEL, 0, decided=False)  # all of it taken...
    ledger.answered(CHANNEL, 400, decided=False)  # ...then the payment, answered later
    assert ledger.bound(CHANNEL) == 0  # the lowest: which committed last is not known


def test_a_refused_decision_leaves_the_bound_unknown_until_the_store_decides_again(
        ) -> None:
    ledger = known(500)
    assert ledger.decide(CHANNEL, 100)
    ledger.store_decides(CHANNEL)
    ledger.answered(CHANNEL, None, decided=True, refused=True)
    ledger.answered(CHANNEL, 300, decided=False)
    assert ledger.bound(CHANNEL) is None  # what the store answered meanwhile is not trusted
    ledger.store_decides(CHANNEL)
    ledger.answered(CHANNEL, 200, decided=False)
    assert ledger.bound(CHANNEL) == 200


def test_a_failed_commit_takes_nothing_so_its_sat_count_again() -> None:
    ledger = known(500)
    assert ledger.decide(CHANNEL, 200)
    ledger.answered(CHANNEL, None, decided=True)
    assert ledger.bound(CHANNEL) == 500


@dataclass
class _Queued:
    decided: bool  # by the ledger (exactly `most`), or by the store
    least: int
    most: int
    paid: int = 0  # a payment stored first, in the same transaction (the writer's thread)


class LedgerAgainstStore(RuleBasedStateMachine):
    """The store's credit, the takes' thread (FIFO), the payment writer's thread, and their
    answers, each delivered in its thread's order but in any order between the two."""

    def __init__(self) -> None:
        super().__init__()
        self.ledger = Ledger()
        self.credit = 0
        self.takes: deque[_Queued] = deque()  # the takes' thread
        self.rides: deque[_Queued] = deque()  # the payment writer's thread
        self.takes_answered: deque[tuple[_Queued, int | None, int | None]] = deque()
        self.rides_answered: deque[tuple[_Queued, int | None, int | None]] = deque()
        self.refused = 0

    @rule(sat=st.integers(1, 20))
    def payment_stored(self, sat: int) -> None:
        self.credit += sat

    @rule(needed=st.integers(1, 4), everything=st.booleans())
    def request(self, needed: int, everything: bool) -> None:
        if not everything and self.ledger.decide(CHANNEL, needed):
            self.takes.append(_Queued(True, needed, needed))
            return
        self.ledger.store_decides(CHANNEL)
        self.takes.append(_Queued(False, needed, EVERYTHING if everything else needed))

    @rule(paid=st.integers(1, 6), needed=st.integers(1, 4))
    def request_with_payment(self, paid: int, needed: int) -> None:
        if self.ledger.may_ride(CHANNEL):
            self.ledger.store_decides(CHANNEL)
            self.rides.append(_Queued(False, needed, needed, paid))

    def _commit(self, queued: _Queued, fails: bool) -> tuple[_Queued, int | None, int | None]:
        if fails:
            return queued, None, None
        self.credit += queued.paid
        taken = taking(self.credit, 0, queued.least, queued.most)
        self.credit -= taken or 0
        return queued, taken, self.credit

    @precondition(lambda self: self.takes)
    @rule(fails=_FAILS)
    def takes_commit(self, fails: bool) -> None:
        self.takes_answered.append(self._commit(self.takes.popleft(), fails))

    @precondition(lambda self: self.rides)
    @rule(fails=_FAILS)
    def ride_commits(self, fails: bool) -> None:
        self.rides_answered.append(self._commit(self.rides.popleft(), fails))

    def _answer(self, queued: _Queued, taken: int | None, left: int | None) -> None:
        refused = queued.decided and left is not None and taken != queued.most
        self.refused += refused
        self.ledger.answered(CHANNEL, left, decided=queued.decided, refused=refused)

    @precondition(lambda self: self.takes_answered)
    @rule()
    def takes_answer(self) -> None:
        self._answer(*self.takes_answered.popleft())

    @precondition(lambda self: self.rides_answered)
    @rule()
    def ride_answers(self) -> None:
        self._answer(*self.rides_answered.popleft())

    @rule(order=st.randoms(use_true_random=False))
    def everything_commits_and_answers(self, order: random.Random) -> None:
        """Every queued take commits and is answered, the two threads interleaved."""
        steps: list[tuple[deque[Any], Callable[[], None]]] = [
            (self.takes, lambda: self.takes_commit(False)),
            (self.rides, lambda: self.ride_commits(False)),
            (self.takes_answered, self.takes_answer), (self.rides_answered, self.ride_answers)]
        while ready := [step for queue, step in steps if queue]:
            order.choice(ready)()

    @invariant()
    def never_refused(self) -> None:
        assert self.refused == 0

    @invariant()
    def the_bound_is_below_the_credit_the_decided_takes_will_find(self) -> None:
        bound = self.ledger.bound(CHANNEL)
        waiting = sum(queued.most for queued in self.takes if queued.decided)
        assert bound is None or bound <= self.credit - waiting


TestLedgerAgainstStore = LedgerAgainstStore.TestCase
TestLedgerAgainstStore.settings = settings(max_examples=300, stateful_step_count=50,
                                           deadline=None)
