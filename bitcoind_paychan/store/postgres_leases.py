"""PostgresLeases: the leases, claimed duties and heartbeats of instances sharing one PostgreSQL
store (what they promise: `leases.py`).

- A lease is a row of `channel_leases` (channel, token, holder, instance). `acquire` raises the
  token in one statement (an upsert), whoever held it.
- A payment batch reads its channels' tokens `FOR SHARE` in the transaction that stores the
  payments (`PostgresStore`'s own), and stores only those whose lease is current. An `acquire`
  meanwhile waits for that commit (its update needs the row), so the new holder's read of the
  channel shows every payment of the old lease that was stored, and no later one is.
- A settlement's CLOSING write reads its channel's token `FOR SHARE` in the transaction that
  writes the record (locked `FOR UPDATE`, still OPEN): stored only under the current lease.
- A duty is a row of `duties`; a claim inserts it, or takes it over when its claimer (a process:
  instance name and a nonce, so a restart under the same name is another claimer) has not
  beaten in `instances` for `takeover_after` seconds, or when its `hold` ran out. Times are the
  database server's clock, the same for every instance.
- The heartbeat also ends sessions of our role that wait for their client in the middle of a
  pipelined batch for longer than the idle-in-transaction timeout: a process stopped there
  holds its locks with no timeout of PostgreSQL's (before 17) to end it.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Sequence
from typing import Any

from bitcoind_paychan.channel.records import ChannelRecord, Role
from bitcoind_paychan.errors import LeaseLost, StoreError
from bitcoind_paychan.store.credit import PaymentTake
from bitcoind_paychan.store.leases import (
    ClusterPolicy,
    FencedPayment,
    Lease,
    closing,
    fenced,
    promoting,
    promotion_lost,
    reanchor_lost,
    reanchoring,
    settlement_lost,
)

log = logging.getLogger(__name__)
TABLES = (
    """CREATE TABLE IF NOT EXISTS channel_leases (  -- which connection serves each channel
        role TEXT NOT NULL,
        contract_txid TEXT NOT NULL,
        token BIGINT NOT NULL,  -- raised at every acquisition: fences the older holders
        holder TEXT,  -- instance/connection; NULL once released
        instance TEXT NOT NULL,
        taken_at TIMESTAMPTZ NOT NULL,
        PRIMARY KEY (role, contract_txid))""",
    """CREATE TABLE IF NOT EXISTS instances (  -- each running process's heartbeat
        claimer TEXT PRIMARY KEY,
        instance TEXT NOT NULL,
        started_at TIMESTAMPTZ NOT NULL,
        beat_at TIMESTAMPTZ NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS duties (  -- work one instance does: settle:<txid>, ...
        duty TEXT PRIMARY KEY,
        claimer TEXT NOT NULL,
        until TIMESTAMPTZ,  -- NULL: until finished (or its claimer is silent)
        claimed_at TIMESTAMPTZ NOT NULL)""",
)
ACQUIRE = (
    "INSERT INTO channel_leases AS l (role, contract_txid, token, holder, instance, taken_at) "
    "VALUES (?, ?, 1, ?, ?, now()) ON CONFLICT (role, contract_txid) DO UPDATE SET "
    "token = l.token + 1, holder = excluded.holder, instance = excluded.instance, "
    "taken_at = now() RETURNING token"
)
RELEASE = ("UPDATE channel_leases SET holder = NULL "
           "WHERE role = ? AND contract_txid = ? AND token = ?")
TOKEN = ("SELECT token FROM channel_leases WHERE role = ? AND contract_txid = ? FOR SHARE")
TOKENS = ("SELECT contract_txid, token FROM channel_leases "
          "WHERE role = ? AND contract_txid = ANY(?) ORDER BY contract_txid FOR SHARE")
CLAIM = (
    "INSERT INTO duties AS d (duty, claimer, until, claimed_at) "
    "VALUES (?, ?, now() + make_interval(secs => ?), now()) "
    "ON CONFLICT (duty) DO UPDATE SET claimer = excluded.claimer, until = excluded.until, "
    "claimed_at = now() WHERE d.until < now() OR (d.until IS NULL AND NOT EXISTS ("
    "SELECT 1 FROM instances AS i WHERE i.claimer = d.claimer "
    "AND i.beat_at > now() - make_interval(secs => ?))) RETURNING claimer"
)
FINISH = "DELETE FROM duties WHERE duty = ? AND claimer = ?"
BEAT = ("INSERT INTO instances (claimer, instance, started_at, beat_at) "
        "VALUES (?, ?, now(), now()) ON CONFLICT (claimer) DO UPDATE SET beat_at = now()")
FORGET_SILENT = "DELETE FROM instances WHERE beat_at < now() - interval '1 day'"
# Sessions of our role left waiting for their client in the middle of a pipelined batch (its
# process stopped before the batch's Sync): PostgreSQL's idle-in-transaction timeout does not
# see them (they are "active"), so every heartbeat ends those silent for that long.
REAP_FROZEN = (
    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
    "WHERE datname = current_database() AND usename = current_user "
    "AND pid <> pg_backend_pid() AND state = 'active' AND wait_event = 'ClientRead' "
    "AND xact_start IS NOT NULL AND state_change < now() - make_interval(secs => ?)"
)
LEASE_LOCK = 0x5043484C  # "PCHL": the advisory lock under which the tables are created


class PostgresLeases:
    """Leases in the PostgreSQL store `store` (a PostgresStore), shared by every instance."""

    shared = True

    def __init__(self, store: Any, policy: ClusterPolicy | None = None) -> None:
        self.store = store
        self._policy = policy or ClusterPolicy()
        self._instance = self._policy.instance
        self._claimer = f"{self._instance} {secrets.token_hex(4)}"  # this process
        with store._transaction("create the lease tables") as session:
            session.execute("SELECT pg_advisory_xact_lock(?)", (LEASE_LOCK,))
            for statement in TABLES:
                session.execute(statement)
        self.heartbeat()

    @property
    def instance(self) -> str:
        return self._instance

    @property
    def policy(self) -> ClusterPolicy:
        return self._policy

    def acquire(self, role: Role, contract_txid: str, holder: str) -> Lease:
        role = Role(role)
        with self.store._transaction(f"take the lease of {role} channel {contract_txid}") as s:
            (token,) = s.execute(ACQUIRE, (role.value, contract_txid, holder,
                                           self._instance)).fetchone()
        return Lease(role, contract_txid, holder, int(token))

    def release(self, lease: Lease) -> None:
        with self.store._transaction(f"release the lease of {lease.contract_txid}") as s:
            s.execute(RELEASE, (lease.role.value, lease.contract_txid, lease.token))

    def record_payments(self, batch: Sequence[FencedPayment],
                        takes: Sequence[PaymentTake | None] = ()) -> list[StoreError | None]:
        what = (f"record {len(batch)} payment(s) (they are not stored, so they must not be "
                "acknowledged)")
        with self.store._transaction(what) as session:
            tokens: dict[tuple[Role, str], int] = {}
            for role in {lease.role for _, lease in batch if lease is not None}:
                txids = sorted({lease.contract_txid for _, lease in batch
                                if lease is not None and lease.role is role})
                for txid, token in session.execute(TOKENS, (role.value, txids)).fetchall():
                    tokens[(role, txid)] = int(token)
            outcomes = fenced(batch, tokens, lambda payments, _: self.store._store_payments(
                session, payments))
            self.store._takes_after(session, outcomes, takes)
            return outcomes

    def store_settlement(self, record: ChannelRecord, lease: Lease) -> None:
        self._store_fenced(lease, closing(record), settlement_lost, "settlement")

    def store_reanchor(self, record: ChannelRecord, lease: Lease) -> None:
        self._store_fenced(lease, reanchoring(record), reanchor_lost, "re-anchor")

    def store_promotion(self, lease: Lease, fee_rate: int) -> ChannelRecord:
        return self._store_fenced(lease, promoting(fee_rate), promotion_lost, "promotion")

    def _store_fenced(self, lease: Lease, change: Callable[[ChannelRecord], ChannelRecord],
                      lost: Callable[[Lease], LeaseLost], what: str) -> ChannelRecord:
        """`modify` the channel with `change` only while `lease` is current, in one
        transaction (the token row locked FOR SHARE: no acquisition in between)."""
        doing = (f"store the {what} of {lease.contract_txid} (it is not stored, so it must "
                 "not be broadcast)")
        with self.store._transaction(doing) as session:
            row = session.execute(TOKEN, (lease.role.value, lease.contract_txid)).fetchone()
            if row is None or int(row[0]) != lease.token:
                raise lost(lease)
            stored: ChannelRecord = self.store._modify(session, lease.role, lease.contract_txid,
                                                       change)
            return stored

    def claim(self, duty: str, hold: float | None = None) -> bool:
        with self.store._transaction(f"claim {duty}") as session:
            row = session.execute(CLAIM, (duty, self._claimer, hold,
                                          self._policy.takeover_after)).fetchone()
        return row is not None

    def finish(self, duty: str) -> None:
        with self.store._transaction(f"finish {duty}") as session:
            session.execute(FINISH, (duty, self._claimer))

    def heartbeat(self) -> None:
        with self.store._transaction("beat this instance's heartbeat") as session:
            session.execute(BEAT, (self._claimer, self._instance))
            session.execute(FORGET_SILENT)
            idle = self.store.timeouts.idle_in_transaction_session_timeout
            (ended,) = session.execute(REAP_FROZEN, (idle,)).fetchone()
        if ended:
            log.warning("ended %d database session(s) of a frozen instance: waiting for their "
                        "client inside a pipelined transaction for over %s s (their "
                        "uncommitted writes are not stored)", ended, idle)
