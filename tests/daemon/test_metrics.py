"""The product's metrics (prometheus-client) and the /metrics listener."""

from __future__ import annotations

import asyncio
import logging
import re
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bitcoind_paychan import __version__
from bitcoind_paychan.daemon.metrics import CONTENT_TYPE, MetricsServer, PaychanMetrics
from bitcoind_paychan.errors import ErrorCode

# The scrape of the hand-written exposition this replaced, every metric exercised: each
# family's TYPE, and each sample name with its label names. Dashboards and alerts written
# against it keep working.
BASELINE_TYPES = {
    "paychan_can_settle": "gauge",
    "paychan_channels": "gauge",
    "paychan_errors_total": "counter",
    "paychan_node_last_block_height": "gauge",
    "paychan_node_up": "gauge",
    "paychan_payment_amount_sat_total": "counter",
    "paychan_payment_latency_seconds": "histogram",
    "paychan_payments_total": "counter",
    "paychan_value_locked_sat": "gauge",
}
BASELINE_SAMPLES = {
    "paychan_can_settle": ("reason",),
    "paychan_channels": ("role", "state"),
    "paychan_errors_total": ("code", "role"),
    "paychan_node_last_block_height": (),
    "paychan_node_up": (),
    "paychan_payment_amount_sat_total": ("role",),
    "paychan_payment_latency_seconds_bucket": ("le", "role"),
    "paychan_payment_latency_seconds_count": ("role",),
    "paychan_payment_latency_seconds_sum": ("role",),
    "paychan_payments_total": ("role",),
    "paychan_value_locked_sat": ("role",),
}
BASELINE_BUCKETS = ["0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1",
                    "0.25", "0.5", "1.0", "2.5", "5.0", "+Inf"]


def exercised() -> PaychanMetrics:
    m = PaychanMetrics("regtest")
    m.channels.labels(role="server", state="open").set(2)
    m.locked.labels(role="server").set(150_000)
    m.client.paid(1000, 0.002)
    m.server.paid(700)
    m.errors.labels(role="server", code="TIMEOUT").inc()
    m.node_up.set(1)
    m.settle_state("ok")
    m.height.set(812_345)
    m.next_deadline.labels(role="server").set(3600)
    m.unconfirmed.labels(role="server").set(0)
    m.store_size.set(4096)
    return m


def samples(text: str) -> dict[str, set[tuple[str, ...]]]:
    found: dict[str, set[tuple[str, ...]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, set()).add(tuple(sorted(sample.labels)))
    return found


def test_every_metric_keeps_its_name_type_and_labels() -> None:
    text = exercised().render().decode()
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE))
    for name, kind in BASELINE_TYPES.items():
        assert types.get(name) == kind, name
    found = samples(text)
    for name, labels in BASELINE_SAMPLES.items():
        assert found.get(name) == {labels}, name
    buckets = re.findall(r'paychan_payment_latency_seconds_bucket\{le="([^"]+)",role="client"',
                         text)
    assert buckets == BASELINE_BUCKETS
    assert "_created" not in text  # no new series beside the counters


def test_values_and_meaning() -> None:
    text = exercised().render().decode()
    for line in [
        'paychan_channels{role="server",state="open"} 2.0',
        'paychan_value_locked_sat{role="server"} 150000.0',
        'paychan_payments_total{role="client"} 1.0',
        'paychan_payments_total{role="server"} 1.0',
        'paychan_payment_amount_sat_total{role="client"} 1000.0',
        'paychan_payment_amount_sat_total{role="server"} 700.0',
        'paychan_payment_latency_seconds_bucket{le="0.0025",role="client"} 1.0',
        'paychan_payment_latency_seconds_count{role="client"} 1.0',
        'paychan_errors_total{code="TIMEOUT",role="server"} 1.0',
        "paychan_node_up 1.0",
        "paychan_node_last_block_height 812345.0",
        'paychan_next_deadline_seconds{role="server"} 3600.0',
        'paychan_settlements_unconfirmed{role="server"} 0.0',
        "paychan_store_size_bytes 4096.0",
    ]:
        assert line + "\n" in text, line


def test_build_info_and_process_metrics() -> None:
    found = samples(PaychanMetrics("signet").render().decode())
    assert found["paychan_build_info"] == {("network", "python", "version")}
    for name in ("process_resident_memory_bytes", "process_cpu_seconds_total",
                 "process_open_fds", "python_info"):
        assert name in found, name
    text = PaychanMetrics("signet").render().decode()
    assert f'version="{__version__}"' in text and 'network="signet"' in text


def test_collect_runs_at_scrape_and_failures_are_logged(
        caplog: pytest.LogCaptureFixture) -> None:
    m = PaychanMetrics()
    assert b"paychan_node_up 0.0\n" in m.render()  # no collect set yet
    m.collect = lambda: m.node_up.set(1)
    assert b"paychan_node_up 1.0\n" in m.render()

    def broken() -> None:
        raise RuntimeError("store closed")

    m.collect = broken
    with caplog.at_level(logging.ERROR):
        assert b"paychan_node_up 1.0\n" in m.render()
    assert "collector failed" in caplog.text


def test_scrape_over_http() -> None:
    async def main() -> None:
        m = PaychanMetrics()
        m.server.paid(5)
        server = MetricsServer(m, "127.0.0.1", 0)
        host, port = await server.start()
        base = f"http://{host}:{port}"
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

        def get(path: str, method: str = "GET") -> tuple[int, str, str]:
            request = urllib.request.Request(base + path, method=method)
            try:
                with opener.open(request, timeout=5) as response:
                    return (response.status, response.headers["Content-Type"],
                            response.read().decode())
            except urllib.error.HTTPError as exc:
                with exc:
                    return exc.code, exc.headers["Content-Type"], exc.read().decode()

        try:
            status, content_type, body = await asyncio.to_thread(get, "/metrics")
            assert status == 200 and content_type == CONTENT_TYPE
            assert 'paychan_payments_total{role="server"} 1.0\n' in body
            assert (await asyncio.to_thread(get, "/metrics?x=1"))[0] == 200
            status, _, body = await asyncio.to_thread(get, "/metrics", "HEAD")
            assert status == 200 and body == ""
            assert (await asyncio.to_thread(get, "/"))[0] == 404
            assert (await asyncio.to_thread(get, "/metrics", "POST"))[0] == 405
        finally:
            await server.stop()

    asyncio.run(main())


def test_can_settle_is_one_series_labelled_with_the_reason() -> None:
    m = PaychanMetrics()
    m.settle_state("ok")
    m.settle_state("wallet_not_loaded")
    text = m.render().decode()
    assert 'paychan_can_settle{reason="wallet_not_loaded"} 0.0' in text
    assert 'reason="ok"' not in text
    m.settle_state("ok")
    assert 'paychan_can_settle{reason="ok"} 1.0' in m.render().decode()


def test_error_counters_exist_from_the_start_and_help_covers_both_roles() -> None:
    """rate() and increase() need a zero before the first error; a HELP text says what each
    role counts."""
    scrape = PaychanMetrics("regtest").render().decode()
    for code in ErrorCode:
        for role in ("server", "client"):
            assert f'paychan_errors_total{{code="{code.name}",role="{role}"}} 0.0' in scrape
    helps = dict(re.findall(r"^# HELP (paychan_\w+) (.*)$", scrape, re.M))
    for name in ("paychan_channels", "paychan_value_locked_sat", "paychan_payments_total",
                 "paychan_payment_amount_sat_total", "paychan_payment_latency_seconds"):
        assert "server" in helps[name] and "client" in helps[name], (name, helps[name])
