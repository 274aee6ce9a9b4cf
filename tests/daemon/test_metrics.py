"""The Prometheus registry, its text format, and the /metrics endpoint."""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import urllib.error
import urllib.request

import pytest

from bitcoind_paychan.daemon.metrics import (
    CONTENT_TYPE,
    Counter,
    Gauge,
    Histogram,
    MetricsServer,
    PaychanMetrics,
    Registry,
    format_value,
)


def test_render_exact_text() -> None:
    r = Registry()
    requests = Counter("app_requests_total", "Requests served.", ["method", "code"], r)
    temperature = Gauge("app_temperature", "Degrees.", (), r)
    latency = Histogram("app_latency_seconds", "Latency.", ["role"], r, buckets=[0.1, 1, 5])
    requests.labels(method="get", code=200).inc()
    requests.labels(method="get", code=200).inc(2)
    requests.labels(code="500", method="post").inc()
    temperature.set(21.5)
    for value in (0.05, 0.1, 0.7, 3, 30):
        latency.labels(role="client").observe(value)
    assert r.render() == (
        "# HELP app_requests_total Requests served.\n"
        "# TYPE app_requests_total counter\n"
        'app_requests_total{method="get",code="200"} 3\n'
        'app_requests_total{method="post",code="500"} 1\n'
        "# HELP app_temperature Degrees.\n"
        "# TYPE app_temperature gauge\n"
        "app_temperature 21.5\n"
        "# HELP app_latency_seconds Latency.\n"
        "# TYPE app_latency_seconds histogram\n"
        'app_latency_seconds_bucket{role="client",le="0.1"} 2\n'
        'app_latency_seconds_bucket{role="client",le="1"} 3\n'
        'app_latency_seconds_bucket{role="client",le="5"} 4\n'
        'app_latency_seconds_bucket{role="client",le="+Inf"} 5\n'
        'app_latency_seconds_sum{role="client"} 33.85\n'
        'app_latency_seconds_count{role="client"} 5\n'
    )


def test_unlabelled_metrics_start_at_zero_labelled_ones_empty() -> None:
    r = Registry()
    Counter("c_total", "C.", registry=r)
    Gauge("g", "G.", ["x"], r)
    Histogram("h", "H.", registry=r, buckets=[1])
    assert r.render() == (
        "# HELP c_total C.\n# TYPE c_total counter\nc_total 0\n"
        "# HELP g G.\n# TYPE g gauge\n"
        "# HELP h H.\n# TYPE h histogram\n"
        'h_bucket{le="1"} 0\nh_bucket{le="+Inf"} 0\nh_sum 0\nh_count 0\n'
    )


def test_escaping() -> None:
    r = Registry()
    g = Gauge("esc", 'Help with \\ backslash\nnewline and "quotes".', ["v"], r)
    g.labels(v='a\\b"c"\nd').set(1)
    assert r.render() == (
        '# HELP esc Help with \\\\ backslash\\nnewline and "quotes".\n'
        "# TYPE esc gauge\n"
        'esc{v="a\\\\b\\"c\\"\\nd"} 1\n'
    )


def test_values() -> None:
    assert [format_value(v) for v in (0, 3, 2.0, 0.0005, -1.5, 1e20, 1e-7)] == [
        "0", "3", "2", "0.0005", "-1.5", "1e+20", "1e-07"]
    assert [format_value(v) for v in (math.inf, -math.inf, math.nan)] == ["+Inf", "-Inf", "NaN"]
    g = Gauge("g", "G.")
    g.set(5)
    g.inc(2)
    g.dec(0.5)
    assert g.samples() == ["g 6.5"]


def test_misuse_is_refused() -> None:
    r = Registry()
    c = Counter("c_total", "C.", ["role"], r)
    with pytest.raises(ValueError, match="only goes up"):
        c.labels(role="x").inc(-1)
    with pytest.raises(ValueError, match="takes labels"):
        c.labels(rol="x")
    with pytest.raises(ValueError, match=r"use \.labels"):
        c.inc()
    with pytest.raises(ValueError, match="already registered"):
        Counter("c_total", "again", registry=r)
    with pytest.raises(ValueError, match="invalid metric name"):
        Gauge("bad-name", "x")
    with pytest.raises(ValueError, match="invalid label name"):
        Gauge("g", "x", ["__reserved"])
    with pytest.raises(ValueError, match="'le'"):
        Histogram("h", "x", ["le"])
    with pytest.raises(ValueError, match="increasing"):
        Histogram("h", "x", buckets=[1, 1])


def test_threads_do_not_lose_updates() -> None:
    c = Counter("c_total", "C.", ["t"])

    def work() -> None:
        for _ in range(5000):
            c.labels(t="a").inc()

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert c.samples() == ['c_total{t="a"} 20000']


def test_collectors_run_at_render_and_failures_are_logged(
        caplog: pytest.LogCaptureFixture) -> None:
    m = PaychanMetrics()
    assert "paychan_node_up 0\n" in m.registry.render()  # no collect set yet
    m.collect = lambda: m.node_up.set(1)
    assert "paychan_node_up 1\n" in m.registry.render()

    def broken() -> None:
        raise RuntimeError("store closed")

    m.collect = broken
    with caplog.at_level(logging.ERROR):
        assert "paychan_node_up 1\n" in m.registry.render()
    assert "collector failed" in caplog.text


def test_paychan_metrics() -> None:
    m = PaychanMetrics()
    m.channels.labels(role="server", state="open").set(2)
    m.locked.labels(role="server").set(150_000)
    m.payments.labels(role="client").inc()
    m.amounts.labels(role="client").inc(1000)
    m.latency.labels(role="client").observe(0.002)
    m.errors.labels(code="TIMEOUT").inc()
    m.node_up.set(1)
    m.height.set(812_345)
    text = m.registry.render()
    for line in [
        "# TYPE paychan_channels gauge",
        'paychan_channels{role="server",state="open"} 2',
        'paychan_value_locked_sat{role="server"} 150000',
        "# TYPE paychan_payments_total counter",
        'paychan_payments_total{role="client"} 1',
        'paychan_payment_amount_sat_total{role="client"} 1000',
        "# TYPE paychan_payment_latency_seconds histogram",
        'paychan_payment_latency_seconds_bucket{role="client",le="0.0005"} 0',
        'paychan_payment_latency_seconds_bucket{role="client",le="0.0025"} 1',
        'paychan_payment_latency_seconds_bucket{role="client",le="5"} 1',
        'paychan_payment_latency_seconds_bucket{role="client",le="+Inf"} 1',
        'paychan_payment_latency_seconds_count{role="client"} 1',
        'paychan_errors_total{code="TIMEOUT"} 1',
        "paychan_node_up 1",
        "paychan_node_last_block_height 812345",
    ]:
        assert line + "\n" in text, line
    assert text.endswith("\n") and "\n\n" not in text


def test_scrape_over_http() -> None:
    async def main() -> None:
        m = PaychanMetrics()
        m.payments.labels(role="server").inc(3)
        server = MetricsServer(m.registry, "127.0.0.1", 0)
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
            assert body == m.registry.render()
            assert 'paychan_payments_total{role="server"} 3\n' in body
            assert (await asyncio.to_thread(get, "/metrics?x=1"))[0] == 200
            assert (await asyncio.to_thread(get, "/"))[0] == 404
            assert (await asyncio.to_thread(get, "/metrics", "POST"))[0] == 405
        finally:
            await server.stop()

    asyncio.run(main())
