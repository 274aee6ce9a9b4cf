"""The product's Prometheus metrics (prometheus-client) and their `/metrics` listener.

    metrics = PaychanMetrics(network="mainnet")
    metrics.server_paid(1000, latency=0.004)    # the hot path: pre-bound children only
    metrics.render()                            # the text exposition (format 0.0.4)

`collect`, if set, runs before each scrape to refresh the gauges that describe state
(channels, deadlines, node, store); a failing collector is logged and the last values are
served. Besides the product's own metrics the registry carries `paychan_build_info`, the
process metrics (`process_*`) and Python's (`python_*`). Several daemons on one host are told
apart by the `instance` label Prometheus gives each scrape target.
"""

from __future__ import annotations

import logging
import platform
from collections.abc import Callable
from http import HTTPStatus

import prometheus_client
from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_PLAIN_0_0_4,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
)

from bitcoind_paychan import __version__
from bitcoind_paychan.daemon.web import WebServer
from bitcoind_paychan.errors import ErrorCode

log = logging.getLogger(__name__)

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                   5.0)
ROLES = ("server", "client")

# No `_created` series: the counters are exposed as before.
prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]


class RoleMetrics:
    """One role's hot-path children, bound once (a `labels()` lookup costs more than the
    update itself)."""

    def __init__(self, metrics: PaychanMetrics, role: str) -> None:
        self.payments = metrics.payments.labels(role=role)
        self.amounts = metrics.amounts.labels(role=role)
        self.latency = metrics.latency.labels(role=role)

    def paid(self, amount: int, latency: float | None = None) -> None:
        """One payment made (client) or received (server)."""
        self.payments.inc()
        self.amounts.inc(amount)
        if latency is not None:
            self.latency.observe(latency)


class PaychanMetrics:
    """Every metric the daemon exposes, in one registry."""

    def __init__(self, network: str = "") -> None:
        self.registry = r = CollectorRegistry()
        self.collect: Callable[[], None] | None = None
        self.channels = Gauge(
            "paychan_channels", "Stored channels by role (server: channels clients opened to "
            "us; client: channels we opened) and state.", ["role", "state"], registry=r)
        self.forgotten = Gauge(
            "paychan_channels_forgotten", "Channels closed, buried and forgotten (their history "
            "kept until pruned), by role.", ["role"], registry=r)
        self.lifetime = Gauge(
            "paychan_channels_lifetime", "Channels ever opened, by role: stored (any state) and "
            "forgotten; never-funded channels that were discarded are not counted.", ["role"],
            registry=r)
        self.locked = Gauge("paychan_value_locked_sat",
                            "Satoshis locked in open channels, by role (server: clients' "
                            "channels to us; client: our channels).", ["role"], registry=r)
        self.payments = Counter("paychan_payments_total", "Payments received (role server) or "
                                "made (role client), the opening payment of each channel "
                                "included.", ["role"], registry=r)
        self.amounts = Counter("paychan_payment_amount_sat_total",
                               "Satoshis received (role server) or paid (role client).",
                               ["role"], registry=r)
        self.latency = Histogram(
            "paychan_payment_latency_seconds", "Per payment counted in paychan_payments_total: "
            "server, from receiving it (an opening payment: its contract) to its "
            "acknowledgement being due (checked and stored); client, from asking to pay to "
            "the server's acknowledgement.", ["role"], registry=r, buckets=LATENCY_BUCKETS)
        self.errors = Counter("paychan_errors_total", "Protocol errors on the connections "
                              "of each role (server: clients' connections to us; client: ours "
                              "to servers), sent or received, by wire error code.",
                              ["role", "code"], registry=r)
        for role in ("server", "client"):  # every series from the start: rate() needs its zero
            for code in ErrorCode:
                self.errors.labels(role=role, code=code.name)
        self.callback_errors = Counter(
            "paychan_callback_errors_total", "Exceptions raised by the application's callbacks "
            "(on_payment, on_event), each logged and ignored.", registry=r)
        self.reanchors = Counter(
            "paychan_reanchors_total", "Re-anchors of live channels (issue 23) the server "
            "stored complete and broadcast, by what they did (kind: topup, payout, renewal; "
            "one re-anchor doing several counts under each).", ["kind"], registry=r)
        for kind in ("topup", "payout", "renewal"):
            self.reanchors.labels(kind=kind)
        self.paid_out = Counter(
            "paychan_reanchor_payout_sat_total", "Satoshis re-anchors paid out to the server "
            "(gross: its payout output and its fee part), the channels going on.", registry=r)
        self.reanchors_pending = Gauge(
            "paychan_reanchors_pending", "Channels with a re-anchor in flight (signed, not yet "
            "confirmed and promoted), by role.", ["role"], registry=r)
        self.node_up = Gauge("paychan_node_up", "1 if bitcoind answers, else 0.", registry=r)
        self.can_settle = Gauge(
            "paychan_can_settle", "1 if this daemon can settle and refund right now (bitcoind "
            "answers, the wallet is loaded and unlocked, the chain synced, unsettled contracts' "
            "blocks on disk), else 0; `reason` says which failed (ok when none).", ["reason"],
            registry=r)
        self.height = Gauge("paychan_node_last_block_height",
                            "Height of the last block seen from bitcoind.", registry=r)
        self.next_deadline = Gauge(
            "paychan_next_deadline_seconds", "Seconds until the next deadline of an unsettled "
            "channel (server: settle by; client: refund valid from), by role; negative when "
            "past; absent without such channels.", ["role"], registry=r)
        self.unconfirmed = Gauge(
            "paychan_settlements_unconfirmed", "Channels closing whose settlement (or refund) "
            "has no confirmation yet, by role.", ["role"], registry=r)
        self.store_size = Gauge("paychan_store_size_bytes",
                                "Size of the SQLite channel store on disk (database and journal); "
                                "not set with PostgreSQL (watch the database server).",
                                registry=r)
        Info("paychan_build", "The daemon's version, Python and network.", registry=r).info(
            {"version": __version__, "python": platform.python_version(), "network": network})
        prometheus_client.ProcessCollector(registry=r)
        prometheus_client.PlatformCollector(registry=r)
        prometheus_client.GCCollector(registry=r)
        self.server = RoleMetrics(self, "server")
        self.client = RoleMetrics(self, "client")

    def settle_state(self, reason: str) -> None:
        """`paychan_can_settle`: one series, labelled with the reason."""
        self.can_settle.clear()
        self.can_settle.labels(reason=reason).set(1 if reason == "ok" else 0)

    def render(self) -> bytes:
        """The scrape: refresh the state gauges (`collect`), then the text exposition."""
        if self.collect is not None:
            try:
                self.collect()
            except Exception:
                log.exception("metrics collector failed; rendering the last values")
        return generate_latest(self.registry)


def metrics_app(metrics: PaychanMetrics) -> web.Application:
    """GET /metrics (HEAD too); 404 elsewhere, 405 for other methods."""

    async def scrape(request: web.Request) -> web.Response:
        return web.Response(body=metrics.render(), headers={"Content-Type": CONTENT_TYPE})

    async def elsewhere(request: web.Request) -> web.Response:
        if request.path != "/metrics":
            return web.Response(status=HTTPStatus.NOT_FOUND,
                                text="not found; metrics are at /metrics\n")
        return web.Response(status=HTTPStatus.METHOD_NOT_ALLOWED, text="GET /metrics\n",
                            headers={"Allow": "GET, HEAD"})

    app = web.Application()
    app.router.add_get("/metrics", scrape)
    app.router.add_route("*", "/{tail:.*}", elsewhere)
    return app


class MetricsServer(WebServer):
    """Serves `metrics` as GET /metrics on `host:port`."""

    def __init__(self, metrics: PaychanMetrics, host: str, port: int) -> None:
        super().__init__(metrics_app(metrics), host, port)

    async def start(self) -> tuple[str, int]:
        address = await super().start()
        log.info("metrics on http://%s:%s/metrics", *address)
        return address
