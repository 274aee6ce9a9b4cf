"""When the autopilot wakes: one APScheduler job at the earliest deadline of the
index (re-armed after each wake-up), and a look again once a silent claimer counts as dead
(a mixin of ChainWatcher; the periodic review and retries are added where they start)."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Awaitable, Callable

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from bitcoind_paychan.channel.records import Role
from bitcoind_paychan.channel.watch import WatchPolicy
from bitcoind_paychan.service.watcher.duties import ClusterDuties
from bitcoind_paychan.service.watchindex import WatchIndex

# The "watcher" subsystem's lines (daemon/logs.py), as before the watcher had its package.
log = logging.getLogger("bitcoind_paychan.service.watcher")


class WatchSchedule(ClusterDuties):
    """The watcher's wake-ups."""

    role: Role
    policy: WatchPolicy
    index: WatchIndex
    scheduler: AsyncIOScheduler
    _armed_after: float | None
    review_all: Callable[..., Awaitable[None]]  # the review pipeline's (review.py)

    def _deadline(self, expiry: int) -> int:
        """When a channel expiring at `expiry` needs action: the server's settle time (by
        block time), the client's refund time (by median-time-past)."""
        return expiry - self.policy.settle_margin if self.role is Role.SERVER else expiry

    def _arm(self, after: float | None) -> None:
        """One wake-up, at the earliest deadline later than `after` (None: the earliest of
        all; one already past fires at once)."""
        self._armed_after = after
        deadline = self.index.next_deadline(after)
        job = self.scheduler.get_job("deadline")
        if deadline is None:
            if job:
                job.remove()
            return
        when = dt.datetime.fromtimestamp(deadline, dt.UTC)
        if job and job.next_run_time == when:
            return
        self.scheduler.add_job(self._wake, "date", run_date=when, args=(deadline,),
                               id="deadline", replace_existing=True, misfire_grace_time=None,
                               coalesce=True)

    async def _wake(self, deadline: int) -> None:
        """A deadline came: review the channels that are due, then wait for the next one."""
        try:
            await self.review_all(final=False)
        finally:
            self._arm(max(deadline, int(dt.datetime.now(dt.UTC).timestamp())))

    def deadline_of(self, contract_txid: str) -> dt.datetime | None:
        """When the watched open channel needs action (None: not watched or not open)."""
        deadline = self.index.deadline(contract_txid)
        return None if deadline is None else dt.datetime.fromtimestamp(deadline, dt.UTC)

    def _look_again_after_takeover(self) -> None:
        """Review the due channels again once a silent claimer would count as dead."""
        assert self.leases is not None
        when = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=self.leases.policy.takeover_after)
        self.scheduler.add_job(self.review_all, "date", id="takeover", replace_existing=True,
                               run_date=when, kwargs={"final": False})
