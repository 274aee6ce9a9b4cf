"""The control API's implementation (`control.DaemonApi`): what `paychan` and the
dashboard ask of a running daemon. The daemon (daemon.py) wires the services it reads."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from dataclasses import asdict
from typing import Any, overload

from bitcoind_paychan import __version__
from bitcoind_paychan.bitcoin.tx import Transaction
from bitcoind_paychan.channel.records import ChannelRecord, ChannelStatus, Role
from bitcoind_paychan.daemon.activity import Activity
from bitcoind_paychan.daemon.config import Config, server_address
from bitcoind_paychan.daemon.eventloop import event_loop_name
from bitcoind_paychan.daemon.health import SettleHealth
from bitcoind_paychan.daemon.metrics import PaychanMetrics
from bitcoind_paychan.daemon.rows import (
    channel_row,
    forgotten_row,
    instant,
    live_row,
    payment_text,
)
from bitcoind_paychan.errors import (
    ChannelFailed,
    InvalidParameter,
    LocalProtocolError,
    NodeError,
)
from bitcoind_paychan.logcontext import bind_channel
from bitcoind_paychan.node import Bitcoind
from bitcoind_paychan.node.health import Reason
from bitcoind_paychan.service.client import Channel, PaymentClient, Source
from bitcoind_paychan.service.server import PaymentServer
from bitcoind_paychan.service.watcher import ChannelView
from bitcoind_paychan.store import ChannelStore, ChannelSummary

# The "daemon" subsystem's logger (logs.SUBSYSTEMS), as before the control API had its module.
log = logging.getLogger("bitcoind_paychan.daemon.daemon")


class ControlApi:
    """The control API over the services a Daemon runs (a base of Daemon, which sets them)."""

    config: Config
    metrics: PaychanMetrics
    activity: Activity
    server: PaymentServer | None
    client: PaymentClient | None
    node: Bitcoind
    health: SettleHealth
    store: ChannelStore | None
    started: float  # when the daemon started (time.time())
    _stop: asyncio.Event
    _busy: int

    def _node_healthy(self) -> bool:
        return all(service.watcher.healthy for service in (self.server, self.client)
                   if service is not None)

    def _views(self) -> list[ChannelView]:
        return [*(self.server.views() if self.server else []),
                *(self.client.views() if self.client else [])]

    async def getinfo(self) -> dict[str, Any]:
        """Answers while the node is down too: its state, and the last height seen."""
        try:
            height: int | None = (await asyncio.to_thread(self.node.tip)).height
            node, node_error = "up", None
        except NodeError as exc:
            height, node, node_error = self._last_height(), "down", str(exc)
        settle = await self.health.check()  # what the docs say getinfo checks
        return {
            "version": __version__, "network": self.config.network, "node": node,
            "node_error": node_error, "can_settle": settle.can_settle,
            "can_settle_reason": settle.reason.value, "can_settle_detail": settle.detail,
            "height": height,
            "uptime": int(time.time() - self.started),
            "event_loop": event_loop_name(),
            "server": self.config.server.listen if self.server else None,
            "client": sorted(self.config.client.servers) if self.client else None,
            "channels": self._channel_counts(),
            "store": None if self.store is None else asdict(self.store.info()),
        }

    def _channel_counts(self) -> dict[str, dict[str, int]]:
        """Per enabled role: stored channels by state, the forgotten ones (closed, buried,
        their history kept), and the lifetime total (both; never-funded channels that were
        discarded are not counted)."""
        forgotten = Counter(h.role.value for h in self._history())
        counts: dict[str, dict[str, int]] = {}
        for role, service in (("server", self.server), ("client", self.client)):
            if service is None:
                continue
            states = Counter(v.status for v in service.views())
            counts[role] = {state.value: states[state.value] for state in ChannelStatus} | {
                "forgotten": forgotten[role], "lifetime": states.total() + forgotten[role]}
        return counts

    def _last_height(self) -> int | None:
        for service in (self.server, self.client):
            monitor = service.watcher.monitor if service else None
            if monitor is not None and monitor.tip is not None:
                return monitor.tip.height
        return None

    async def dashboard(self) -> dict[str, Any]:
        """What the dashboard shows: channels, the node as the watchers see it (no RPC),
        the last hour's payments."""
        now = time.time()
        settle = self.health.last
        node_error = None
        if settle is not None and settle.reason is Reason.NODE_UNREACHABLE:
            node_error = settle.detail
        return {
            "version": __version__, "network": self.config.network, "now": int(now),
            "node": {"up": self._node_healthy() and node_error is None,
                     "height": self._last_height(), "error": node_error},
            "settle": None if settle is None else settle.as_dict(),
            "roles": [role for role, on in (("server", self.server), ("client", self.client))
                      if on is not None],
            "connections": {"server": self.server.connected if self.server else 0,
                            "client": self.client.connected if self.client else 0},
            "channels": [asdict(v) for v in self._views()],
            "activity": self.activity.series(now),
        }

    async def listchannels(self, state: str | None, include_forgotten: bool | None = None
                           ) -> list[dict[str, Any]]:
        """Stored channels; with `include_forgotten` (`all`), closed and buried ones too."""
        if state is not None and state not in {s.value for s in ChannelStatus}:
            raise LocalProtocolError(f"unknown state {state!r}; one of "
                                     f"{', '.join(s.value for s in ChannelStatus)}")
        rows = [live_row(v) for v in self._views()]
        if include_forgotten:
            rows += [forgotten_row(h) for h in self._history()]
        return [row for row in rows if state is None or row["status"] == state]

    async def getchannel(self, channel_id: str) -> dict[str, Any]:
        """One channel; a daemon that holds both sides of it (paying its own server) shows
        the client's view, and the server's under `server`."""
        found = self._find(channel_id, forgotten=True)
        row = channel_row(found)
        row["generations"] = self._generations(row["role"], row.get("channel_id")
                                               or found.contract_txid)
        if row["role"] == Role.CLIENT.value and self.server is not None:
            server = self._server_side(found.contract_txid)
            if server is not None:
                row["server"] = server
        return row

    async def topup(self, channel_id: str, amount: int) -> dict[str, Any]:
        """Re-anchor a client channel with `amount` sat more from the wallet (within
        `client.max_deposit`); the payments go on meanwhile."""
        with self._working():
            channel = await self._client().resume(self._find(channel_id).contract_txid)
            return reanchor_row(await channel.reanchor(top_up=amount))

    async def renew(self, channel_id: str, window: int | None = None) -> dict[str, Any]:
        """Move a channel's expiry to `window` s from now (default: the client's
        `time_window`, the server's `min_time_window`): a client asks its server; a server
        quotes its live client, which signs on its connection."""
        with self._working():
            view = self._find(channel_id)
            if view.role == Role.SERVER.value and self.server is not None:
                quoted = await self.server.quote(view.channel_id or view.contract_txid, False,
                                                 window or self.server.policy.min_time_window)
                return {"channel_id": view.channel_id, "quoted": quoted}
            client = self._client()
            channel = await client.resume(view.contract_txid)
            return reanchor_row(await channel.reanchor(
                time_window=window or client.policy.time_window))

    async def payout(self, channel_id: str) -> dict[str, Any]:
        """A server's partial settlement of a channel: a quote paying out what its live
        client acknowledged, which the client signs on its connection (R then confirms)."""
        with self._working():
            view = self._find(channel_id)
            if self.server is None:
                raise LocalProtocolError("a payout is the server's, and the server role is "
                                         "not enabled (server.enabled); a client tops up or "
                                         "renews")
            quoted = await self.server.quote(view.channel_id or view.contract_txid)
            return {"channel_id": view.channel_id, "quoted": quoted}

    def _generations(self, role: str, channel_id: str) -> list[dict[str, Any]]:
        """A channel's superseded contracts, oldest first."""
        if self.store is None:
            return []
        return [{"generation": g.generation, "contract_txid": g.contract_txid,
                 "expiry": g.expiry, "value": g.value, "reanchor_txid": g.reanchor_txid,
                 "payout": g.payout, "promoted_at": g.promoted_at}
                for g in self.store.generations(Role(role), channel_id)]

    def _server_side(self, contract_txid: str) -> dict[str, Any] | None:
        """The server's view of a channel this daemon also holds as client, if it has one."""
        assert self.server is not None
        record = self.server.store.get(Role.SERVER, contract_txid)
        if record is not None:
            return live_row(self.server.watcher.view(record))
        summaries = self.server.store.history(Role.SERVER, contract_txid)
        return forgotten_row(summaries[0]) if summaries else None

    def _history(self) -> list[ChannelSummary]:
        return self.store.history() if self.store else []

    async def prunehistory(self, before: str) -> dict[str, Any]:
        """Delete the summaries and payment logs of channels forgotten and closed before
        `before` (a date, a date and time in UTC, or Unix seconds; not in the future)."""
        cutoff = instant(before)
        if cutoff > time.time():
            raise InvalidParameter(f"prunehistory: {before!r} is in the future; give the "
                                     "date before which closed channels' history may go")
        assert self.store is not None
        pruned = await asyncio.to_thread(self.store.prune_history, cutoff)
        log.info("pruned the history of %d channels closed before %s", pruned, before)
        return {"pruned": pruned, "before": cutoff}

    @overload
    def _find(self, channel_id: str) -> ChannelView: ...

    @overload
    def _find(self, channel_id: str, forgotten: bool) -> ChannelView | ChannelSummary: ...

    def _find(self, channel_id: str, forgotten: bool = False) -> ChannelView | ChannelSummary:
        """A channel by contract txid (or a unique prefix), or by a configured server's name
        its one open channel (several: refused, naming them, as `pay` does); if `forgotten`
        and no stored channel matches, a forgotten one. A daemon paying its own server holds
        both sides of a channel: the client's view stands for it."""
        if channel_id in self.config.client.servers and self.client:
            address = self.config.client.servers[channel_id]
            views = [v for v in self.client.views() if v.peer == address and v.status == "open"]
            if not views:
                raise LocalProtocolError(f"no open channel to server {channel_id!r}; give a "
                                         "contract txid to see a closed one")
            _one_channel(channel_id, [v.contract_txid for v in views])
            return views[0]
        found: dict[str, ChannelView | ChannelSummary] = {
            v.contract_txid: v for v in self._views()
            if v.contract_txid.startswith(channel_id)}  # client views overwrite
        if not found and forgotten:
            found = {h.contract_txid: h for h in sorted(self._history(), key=lambda h: h.role,
                                                        reverse=True)  # client's last
                     if h.contract_txid.startswith(channel_id)}
        if len(found) != 1:
            raise LocalProtocolError(
                f"no channel {channel_id!r}" if not found else
                f"{channel_id!r} matches {len(found)} channels; give more of the txid")
        return next(iter(found.values()))

    def _server_address(self, server: str) -> str:
        """A configured server's address, or `server` itself if it is host:port or a ws://
        URL; InvalidParameter if it is malformed (`127.0.0.1:99999`, `:`)."""
        servers = self.config.client.servers
        if server in servers:
            return servers[server]
        if ":" in server:
            try:
                return server_address(server)
            except ValueError as exc:
                raise InvalidParameter(str(exc)) from None
        raise LocalProtocolError(f"unknown server {server!r}; configured: "
                                 f"{', '.join(sorted(servers)) or 'none'}")

    def _client(self) -> PaymentClient:
        if self.client is None:
            raise LocalProtocolError("the client role is not enabled (client.enabled)")
        return self.client

    async def open(self, server: str, amount: int, new: bool = False) -> dict[str, Any]:
        """The open channel of `amount` sat to `server`, resumed, or a new one (always a new
        one with `new`); never one of another value. `resumed` says which."""
        with self._working():
            client = self._client()
            channel, source = await self._lookup(self._server_address(server), amount, new=new)
            view = asdict(client.watcher.view(channel.record))
            # A channel live here already is returned as it is (not resumed, not new).
            return view | {"resumed": source is not Source.NEW}

    async def pay(self, target: str, amount: int, info: str | None) -> dict[str, Any]:
        """Pay `amount` through the channel `target` names; what this payment was and the
        channel's totals after it."""
        with self._working():
            channel = await self._channel_for(target)
            started = time.perf_counter()
            bind_channel(channel.contract_txid, channel.machine.peer)
            try:
                ack = await channel.pay(amount, (info or "").encode())
            except ChannelFailed:
                if channel.connected or channel.record.change == 0:
                    raise  # the server refused it, or the channel is used up
                # The connection was lost, but the payment is stored: resuming the channel
                # sends it again and waits for its acknowledgement.
                log.info("channel %s lost its connection; resuming", channel.contract_txid)
                channel = await self._client().resume(channel.channel_id)
                ack = b""
            self.metrics.client.paid(amount, time.perf_counter() - started)
            self.activity.record(amount, received=False)
            return {"contract_txid": channel.contract_txid, "amount": amount, "info": info,
                    "payment": channel.record.payments, "paid": channel.paid,
                    "remaining": channel.remaining, "value": channel.record.value,
                    "ack_info": ack.decode(errors="replace")}

    async def _channel_for(self, target: str) -> Channel:
        """The channel `pay` uses: a stored open channel by contract txid (or a unique
        prefix), resumed if need be; or, for a server (a configured name or an address), its
        one open channel with money left (resumed), or a new one of the configured channel
        size if there is none. Several open channels to it: refused, naming them."""
        if target not in self.config.client.servers and ":" not in target:
            return await self._channel_by_txid(target)
        address = self._server_address(target)
        _one_channel(target, [r.contract_txid for r in self._client().payable(address)])
        channel, _ = await self._lookup(address, self.config.client.channel_size,
                                        any_value=True)
        return channel

    async def _lookup(self, address: str, amount: int, *, new: bool = False,
                      any_value: bool = False) -> tuple[Channel, Source]:
        """The client manager's channel to `address` (live, else resumed, else new); a new
        one's opening payment counted."""
        started = time.perf_counter()
        found = await self._client().lookup(address, amount, new=new, any_value=any_value)
        channel = found.channel
        if found.source is Source.NEW:
            self.metrics.client.paid(channel.paid, time.perf_counter() - started)
            self.activity.record(channel.paid, received=False)
        return channel, found.source

    async def _channel_by_txid(self, prefix: str) -> Channel:
        """The stored client channel whose contract txid starts with `prefix`, if it is open
        with money left (reconnected after a restart); else an error saying what it is."""
        client = self._client()
        records = [r for r in client.channels() if r.channel_id.startswith(prefix)]
        if not records:
            servers = ", ".join(sorted(self.config.client.servers)) or "none"
            raise LocalProtocolError(f"no server or client channel {prefix!r}: give a "
                                     f"configured server ({servers}), a host:port, or a "
                                     "contract txid")
        if len(records) > 1:
            raise LocalProtocolError(f"{prefix!r} matches {len(records)} channels; give more "
                                     "of the txid")
        record = records[0]
        txid = record.channel_id
        if record.status is not ChannelStatus.OPEN:
            raise LocalProtocolError(f"channel {txid} is {record.status.value}; open a new one "
                                     f"(paychan open {record.peer} AMOUNT)")
        if record.change == 0:
            raise LocalProtocolError(f"channel {txid} is used up (all {record.value} sat "
                                     "paid); close it and open a new one")
        return await client.resume(txid)  # the live one, else reconnected

    async def close(self, channel_id: str) -> dict[str, Any]:
        """Settle an open channel. Never opens one: a channel that is closing or closed is
        reported as it is (status and settlement), the same on every call."""
        with self._working():
            view = self._find(channel_id)
            txid = view.contract_txid
            if view.status != ChannelStatus.OPEN.value:
                return {"contract_txid": txid, "status": view.status,
                        "settlement_txid": self._closing_txid(view)}
            if view.role == "server" and self.server is not None:
                settlement = await self.server.settle(txid)
            else:
                channel = await self._client().resume(txid)  # the live one, else reconnected
                settlement = await channel.close()
            return {"contract_txid": txid, "status": ChannelStatus.CLOSING.value,
                    "settlement_txid": settlement.txid_hex}

    def _closing_txid(self, view: ChannelView) -> str | None:
        """The transaction that closes the channel: seen on chain, else the one we stored."""
        if view.closing_txid:
            return view.closing_txid
        service = self.server if view.role == "server" else self.client
        record = service.store.get(Role(view.role), view.contract_txid) if service else None
        if record is None or not record.settlement_tx:
            return None
        return Transaction.parse(record.settlement_tx).txid_hex

    async def listpayments(self, channel_id: str | None, limit: int | None = None,
                           since: str | None = None) -> list[dict[str, Any]]:
        """Logged payments, newest first (by when they were stored; those logged before
        their time was kept last): at most `limit`, those stored at or after `since`."""
        txid = self._find(channel_id, forgotten=True).contract_txid if channel_id else None
        after = None if since is None else instant(since, "listpayments --since")
        payments: list[dict[str, Any]] = []
        for role, service in ((Role.SERVER, self.server), (Role.CLIENT, self.client)):
            if service is not None:
                payments += [asdict(p) | {"role": role.value, "info": payment_text(p.info),
                                          "info_hex": p.info.hex()}
                             for p in service.store.payments(role, txid, limit, after)]
        payments.sort(key=lambda p: p["stored_at"] or 0, reverse=True)  # stable: by id within
        return payments[:limit]

    async def stop(self) -> dict[str, Any]:
        asyncio.get_running_loop().call_later(0.1, self._stop.set)
        return {"stopping": True}

    @contextlib.contextmanager
    def _working(self) -> Any:
        self._busy += 1
        try:
            yield
        finally:
            self._busy -= 1


def reanchor_row(record: ChannelRecord) -> dict[str, Any]:
    """A re-anchor the server completed: R, what it pays out, the next contract."""
    pending = record.pending
    assert pending is not None
    return {"channel_id": record.channel_id, "reanchor_txid": pending.txid,
            "payout": pending.payout, "value": pending.contract.value,
            "expiry": pending.contract.expiry, "state": "complete" if pending.complete
            else "signed"}


def _one_channel(server: str, txids: list[str]) -> None:
    """`pay` and `close` to a server by name act on its one open channel: refuse several."""
    if len(txids) > 1:
        raise LocalProtocolError(
            f"{len(txids)} channels to server {server!r} are open: {', '.join(sorted(txids))}; "
            "give "
            "the contract txid of the one to use")
