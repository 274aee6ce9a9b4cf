"""The gateway section: where it listens, its channel endpoint, and its routes (each a path
prefix, an upstream URL and a price rule), checked once here."""

from __future__ import annotations

import functools
from typing import Any
from urllib.parse import urlsplit

from bitcoind_paychan.daemon.config.keys import ROUTE_KEYS
from bitcoind_paychan.daemon.config.reader import Reader
from bitcoind_paychan.daemon.config.schema import GatewayConfig
from bitcoind_paychan.daemon.config.yamlfile import show
from bitcoind_paychan.gateway.proxy import MAX_REQUESTS_PER_SESSION
from bitcoind_paychan.gateway.routes import DEFAULT_TIMEOUT, Price, Route, unsafe_path

PER = ("request", "byte", "second", "free")
METERED = ("byte", "second")  # priced by the response: they need a reserve


def read_gateway(r: Reader, d: dict[str, Any]) -> GatewayConfig:
    enabled = r.boolean(d, "gateway", "enabled", False)
    endpoint = r.guard(lambda: _path(r, d.get("endpoint", "/paychan"), "gateway.endpoint"),
                       "/paychan")
    raw = d.get("routes")
    if raw is None:
        raw = []
    if not isinstance(raw, list):
        r.fail("gateway.routes", f"found {show(raw)}, expected a list of routes, each a "
                                 "mapping with path, upstream and a price rule")
    routes: list[Route] = []
    for index, entry in enumerate(raw):
        problems = len(r.problems)
        route = r.guard(functools.partial(_route, r, entry, f"gateway.routes[{index}]",
                                          endpoint), None)
        if route is None or len(r.problems) > problems:
            continue  # its problems are noted
        clash = next((other.path for other in routes
                      if other.path.rstrip("/") == route.path.rstrip("/")), None)
        if clash is not None:
            r.wrong(f"gateway.routes[{index}].path", f"found {route.path!r}, already the path "
                                                     f"of another route ({clash!r}); expected "
                                                     "each path once", None)
            continue
        routes.append(route)
    if enabled and not raw:
        r.fail("gateway.routes", "found none, expected at least one route for an enabled "
                                 "gateway")
    return GatewayConfig(enabled=enabled,
                         listen=r.address(d, "gateway", "listen", "127.0.0.1:8402"),
                         endpoint=endpoint, routes=tuple(routes),
                         max_requests_per_session=r.integer(
                             d, "gateway", "max_requests_per_session",
                             MAX_REQUESTS_PER_SESSION))


def _route(r: Reader, entry: Any, key: str, endpoint: str) -> Route:
    if not isinstance(entry, dict):
        r.fail(key, f"found {show(entry)}, expected a mapping with path, upstream and a "
                    "price rule (per, price, reserve, quantity)")
    r.check_keys(entry, key, ROUTE_KEYS)
    # Each key checked on its own: a problem is noted and the next key read.
    path = r.guard(lambda: _route_path(r, entry, key, endpoint), "/")
    upstream = r.guard(lambda: _upstream(r, entry.get("upstream"), f"{key}.upstream"), "")
    per = r.choice(entry, key, "per", "request", PER)
    timeout = r.number(entry, key, "timeout", DEFAULT_TIMEOUT)
    return Route(path, upstream, _price(r, entry, key, per), timeout)


def _route_path(r: Reader, entry: dict[str, Any], key: str, endpoint: str) -> str:
    path = _path(r, entry.get("path"), f"{key}.path")
    if path.rstrip("/") == endpoint.rstrip("/") or path.startswith(endpoint.rstrip("/") + "/"):
        r.fail(f"{key}.path", f"found {path!r}, which is the channel endpoint "
                              f"(gateway.endpoint: {endpoint}); expected another path")
    return path


def _price(r: Reader, entry: dict[str, Any], key: str, per: str) -> Price:
    if per == "free":
        for name in ("price", "reserve", "quantity"):
            if entry.get(name) is not None:
                r.fail(f"{key}.{name}", f"found {show(entry[name])} on a free route, "
                                        "expected none (or set per: request, byte, second)")
        return Price("free")
    if entry.get("price") is None:
        r.fail(f"{key}.price", f"missing, expected the sat a {per} costs (an integer ≥ 1)")
    price = r.integer(entry, key, "price", 1)
    if per not in METERED:
        for name in ("reserve", "quantity"):
            if entry.get(name) is not None:
                r.fail(f"{key}.{name}", f"found {show(entry[name])} with per: {per}, expected "
                                        "none (a request costs its price)")
        return Price(per, price)
    quantity = r.integer(entry, key, "quantity", 1)
    if entry.get("reserve") is None:
        r.fail(f"{key}.reserve", f"missing, expected the sat a request pre-pays with per: "
                                 f"{per} (at least price, {price})")
    reserve = r.integer(entry, key, "reserve", price, minimum=price)
    return Price(per, price, reserve, quantity)


def _path(r: Reader, value: Any, key: str) -> str:
    if not isinstance(value, str) or not value.startswith("/") or any(
            c in value for c in "?#") or unsafe_path(value) is not None:
        r.fail(key, f"found {show(value)}, expected a URL path starting with / (no query, no "
                    "dot segments), e.g. /api")
    return value


def _upstream(r: Reader, value: Any, key: str) -> str:
    url = urlsplit(value) if isinstance(value, str) else None
    try:
        port_ok = url is not None and (url.port is None or 0 < url.port < 65536)
    except ValueError:
        port_ok = False
    if (url is None or url.scheme not in ("http", "https") or not url.hostname or not port_ok
            or url.query or url.fragment):
        r.fail(key, f"found {show(value)}, expected an http:// or https:// URL with a host "
                    "(and an optional base path), e.g. http://127.0.0.1:8080/v1")
    assert isinstance(value, str)
    return value
