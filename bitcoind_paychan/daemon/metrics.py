"""A tiny Prometheus registry and its `/metrics` endpoint (text exposition format 0.0.4).

    registry = Registry()
    hits = Counter("app_hits_total", "Hits.", ["path"], registry=registry)
    hits.labels(path="/").inc()
    registry.render()   # '# HELP app_hits_total Hits.\\n# TYPE app_hits_total counter\\n...'

A metric without labels has one sample from the start (0); a labelled one has a sample
per label set used. Samples are rendered in label order. Updates are thread-safe.
Collectors registered with `Registry.add_collector` run before each render, to refresh
gauges from the state they describe (a failing collector is logged, not fatal).
"""

from __future__ import annotations

import itertools
import logging
import math
import re
import threading
from collections.abc import Callable, Iterable, Sequence
from http import HTTPStatus
from typing import Any, ClassVar, Generic, TypeVar

from bitcoind_paychan.daemon.http import HttpServer, Request, Response, text_response

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


def format_value(value: float) -> str:
    """A sample value as Prometheus writes it (Go's float formatting)."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))


def escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _label_text(pairs: Iterable[tuple[str, str]]) -> str:
    inner = ",".join(f'{name}="{escape_label(value)}"' for name, value in pairs)
    return f"{{{inner}}}" if inner else ""


class _Child:
    """The value(s) of a metric for one label set."""

    def __init__(self, lock: threading.Lock) -> None:
        self._lock = lock


class CounterChild(_Child):
    def __init__(self, lock: threading.Lock) -> None:
        super().__init__(lock)
        self.value = 0.0

    def inc(self, amount: float = 1) -> None:
        if amount < 0:
            raise ValueError("a counter only goes up; use a Gauge")
        with self._lock:
            self.value += amount


class GaugeChild(_Child):
    def __init__(self, lock: threading.Lock) -> None:
        super().__init__(lock)
        self.value = 0.0

    def set(self, value: float) -> None:
        with self._lock:
            self.value = float(value)

    def inc(self, amount: float = 1) -> None:
        with self._lock:
            self.value += amount

    def dec(self, amount: float = 1) -> None:
        with self._lock:
            self.value -= amount


class HistogramChild(_Child):
    def __init__(self, lock: threading.Lock, bounds: Sequence[float]) -> None:
        super().__init__(lock)
        self.bounds = bounds
        self.counts = [0] * len(bounds)  # per bucket, not cumulative; the last is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        with self._lock:
            for i, bound in enumerate(self.bounds):
                if value <= bound:
                    self.counts[i] += 1
                    break
            self.sum += value


C = TypeVar("C", bound=_Child)


class Metric(Generic[C]):
    """A named metric with label names; `labels(**values)` is the sample for one label set."""

    kind: ClassVar[str]

    def __init__(self, name: str, help: str, labels: Sequence[str] = (),
                 registry: Registry | None = None) -> None:
        if not _METRIC_NAME.fullmatch(name):
            raise ValueError(f"invalid metric name {name!r}")
        for label in labels:
            if not _LABEL_NAME.fullmatch(label) or label.startswith("__"):
                raise ValueError(f"invalid label name {label!r} for {name}")
        if len(set(labels)) != len(labels):
            raise ValueError(f"duplicate label names for {name}: {list(labels)}")
        self.name = name
        self.help = help
        self.label_names = tuple(labels)
        self._lock = threading.Lock()
        self._children: dict[tuple[str, ...], C] = {}
        if not self.label_names:
            self._children[()] = self._new_child()
        if registry is not None:
            registry.register(self)

    def _new_child(self) -> C:
        raise NotImplementedError

    def labels(self, **values: object) -> C:
        if set(values) != set(self.label_names):
            raise ValueError(f"{self.name} takes labels {list(self.label_names)}, "
                             f"got {sorted(values)}")
        key = tuple(str(values[name]) for name in self.label_names)
        with self._lock:
            child = self._children.get(key)
            if child is None:
                child = self._children[key] = self._new_child()
            return child

    def _only(self) -> C:
        if self.label_names:
            raise ValueError(f"{self.name} has labels {list(self.label_names)}; "
                             "use .labels(...) first")
        return self._children[()]

    def samples(self) -> list[str]:
        with self._lock:
            children = sorted(self._children.items())
        lines: list[str] = []
        for key, child in children:
            lines += self._child_samples(list(zip(self.label_names, key, strict=True)), child)
        return lines

    def _child_samples(self, pairs: list[tuple[str, str]], child: C) -> list[str]:
        raise NotImplementedError

    def render(self) -> str:
        head = f"# HELP {self.name} {escape_help(self.help)}\n# TYPE {self.name} {self.kind}\n"
        return head + "".join(line + "\n" for line in self.samples())


class Counter(Metric[CounterChild]):
    kind = "counter"

    def _new_child(self) -> CounterChild:
        return CounterChild(threading.Lock())

    def inc(self, amount: float = 1) -> None:
        self._only().inc(amount)

    def _child_samples(self, pairs: list[tuple[str, str]], child: CounterChild) -> list[str]:
        return [f"{self.name}{_label_text(pairs)} {format_value(child.value)}"]


class Gauge(Metric[GaugeChild]):
    kind = "gauge"

    def _new_child(self) -> GaugeChild:
        return GaugeChild(threading.Lock())

    def set(self, value: float) -> None:
        self._only().set(value)

    def inc(self, amount: float = 1) -> None:
        self._only().inc(amount)

    def dec(self, amount: float = 1) -> None:
        self._only().dec(amount)

    def _child_samples(self, pairs: list[tuple[str, str]], child: GaugeChild) -> list[str]:
        return [f"{self.name}{_label_text(pairs)} {format_value(child.value)}"]


DEFAULT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Histogram(Metric[HistogramChild]):
    kind = "histogram"

    def __init__(self, name: str, help: str, labels: Sequence[str] = (),
                 registry: Registry | None = None,
                 buckets: Sequence[float] = DEFAULT_BUCKETS) -> None:
        bounds = [float(b) for b in buckets]
        if bounds and math.isinf(bounds[-1]):
            bounds.pop()
        if not bounds or any(a >= b for a, b in itertools.pairwise(bounds)):
            raise ValueError(f"{name}: buckets must be increasing and not empty")
        if "le" in labels:
            raise ValueError(f"{name}: a histogram cannot have the label 'le'")
        self.bounds = (*bounds, math.inf)
        super().__init__(name, help, labels, registry)

    def _new_child(self) -> HistogramChild:
        return HistogramChild(threading.Lock(), self.bounds)

    def observe(self, value: float) -> None:
        self._only().observe(value)

    def _child_samples(self, pairs: list[tuple[str, str]],
                       child: HistogramChild) -> list[str]:
        with child._lock:
            counts, total = list(child.counts), child.sum
        lines: list[str] = []
        cumulative = 0
        for bound, count in zip(self.bounds, counts, strict=True):
            cumulative += count
            labels = _label_text([*pairs, ("le", format_value(float(bound)))])
            lines.append(f"{self.name}_bucket{labels} {cumulative}")
        lines.append(f"{self.name}_sum{_label_text(pairs)} {format_value(total)}")
        lines.append(f"{self.name}_count{_label_text(pairs)} {cumulative}")
        return lines


class Registry:
    """The metrics one endpoint exposes, in registration order."""

    def __init__(self) -> None:
        self._metrics: dict[str, Metric[Any]] = {}
        self._collectors: list[Callable[[], None]] = []
        self._lock = threading.Lock()

    def register(self, metric: Metric[Any]) -> None:
        with self._lock:
            if metric.name in self._metrics:
                raise ValueError(f"metric {metric.name} is already registered")
            self._metrics[metric.name] = metric

    def add_collector(self, collect: Callable[[], None]) -> None:
        """Run `collect()` before each render (to refresh gauges)."""
        self._collectors.append(collect)

    def render(self) -> str:
        for collect in list(self._collectors):
            try:
                collect()
            except Exception:
                log.exception("metrics collector failed; rendering the last values")
        with self._lock:
            metrics = list(self._metrics.values())
        return "".join(metric.render() for metric in metrics)


class MetricsServer:
    """Serves `registry` as GET /metrics on `host:port`."""

    def __init__(self, registry: Registry, host: str, port: int) -> None:
        self.registry = registry
        self.http = HttpServer(self.handle, host, port)

    async def start(self) -> tuple[str, int]:
        address = await self.http.start()
        log.info("metrics on http://%s:%s/metrics", *address)
        return address

    async def stop(self) -> None:
        await self.http.stop()

    async def handle(self, request: Request) -> Response:
        if request.path.partition("?")[0] != "/metrics":
            return text_response(HTTPStatus.NOT_FOUND, "not found; metrics are at /metrics")
        if request.method not in ("GET", "HEAD"):
            return Response(HTTPStatus.METHOD_NOT_ALLOWED, b"GET /metrics\n",
                            headers={"Allow": "GET, HEAD"})
        return Response(HTTPStatus.OK, self.registry.render().encode(), CONTENT_TYPE)


LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                   5.0)


class PaychanMetrics:
    """The product's metrics. `collect`, if set, runs before each scrape (the daemon
    refreshes the channel and node gauges there)."""

    def __init__(self) -> None:
        self.registry = r = Registry()
        self.collect: Callable[[], None] | None = None
        self.channels = Gauge("paychan_channels", "Channels by role and state.",
                              ["role", "state"], r)
        self.locked = Gauge("paychan_value_locked_sat",
                            "Satoshis locked in open channels, by role.", ["role"], r)
        self.payments = Counter("paychan_payments_total", "Payments made (client) or "
                                "received (server).", ["role"], r)
        self.amounts = Counter("paychan_payment_amount_sat_total",
                               "Satoshis paid (client) or received (server).", ["role"], r)
        self.latency = Histogram("paychan_payment_latency_seconds",
                                 "Time from sending a payment to its acknowledgement.",
                                 ["role"], r, buckets=LATENCY_BUCKETS)
        self.errors = Counter("paychan_errors_total", "Protocol errors, by error code.",
                              ["code"], r)
        self.node_up = Gauge("paychan_node_up", "1 if bitcoind answers, else 0.", (), r)
        self.height = Gauge("paychan_node_last_block_height",
                            "Height of the last block seen from bitcoind.", (), r)
        r.add_collector(self._collect)

    def _collect(self) -> None:
        if self.collect is not None:
            self.collect()
