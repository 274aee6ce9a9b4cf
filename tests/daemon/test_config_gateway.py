"""The gateway section: each route key read as documented (docs/config.md, The gateway),
and every way to get one wrong, each named by its key path."""

from __future__ import annotations

from typing import Any

import pytest

from bitcoind_paychan.daemon.config import config_from_dict
from bitcoind_paychan.errors import ConfigError
from bitcoind_paychan.gateway import Price, Route

API = {"path": "/api", "upstream": "http://127.0.0.1:8080/v1", "price": 10}
BYTES = {"path": "/dl", "upstream": "https://files.example", "per": "byte", "price": 1,
         "reserve": 500}


def gateway(*routes: dict[str, Any], server: dict[str, Any] | None = None,
            **keys: Any) -> dict[str, Any]:
    return {"server": {"enabled": True, **(server or {})},
            "gateway": {"enabled": True, "routes": list(routes), **keys}}


def error_of(data: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as caught:
        config_from_dict(data)
    return str(caught.value)


def test_the_gateway_is_off_by_default_and_reads_its_keys() -> None:
    off = config_from_dict({}).gateway
    assert (off.enabled, off.listen, off.endpoint, off.routes) == (
        False, "127.0.0.1:8402", "/paychan", ())
    on = config_from_dict(gateway(API, BYTES, {"path": "/health", "upstream": "http://h",
                                               "per": "free"},
                                  listen="0.0.0.0:8080", endpoint="/channels")).gateway
    assert (on.enabled, on.listen, on.endpoint) == (True, "0.0.0.0:8080", "/channels")
    assert on.routes == (
        Route("/api", "http://127.0.0.1:8080/v1", Price("request", 10)),
        Route("/dl", "https://files.example", Price("byte", 1, 500, 1)),
        Route("/health", "http://h", Price("free")))


@pytest.mark.parametrize(("key", "value", "read"), [
    ("price", 25, lambda r: r.price.price),
    ("quantity", 1000, lambda r: r.price.quantity),
    ("reserve", 900, lambda r: r.price.reserve),
    ("timeout", 2.5, lambda r: r.timeout),
    ("upstream", "http://other:81", lambda r: r.upstream),
    ("path", "/v2", lambda r: r.path),
])
def test_each_route_key_sets_its_field(key: str, value: Any, read: Any) -> None:
    entry = {**BYTES, key: value}
    (route,) = config_from_dict(gateway(entry)).gateway.routes
    (default,) = config_from_dict(gateway(BYTES)).gateway.routes
    assert read(route) == value != read(default)


def test_per_sets_the_price_rule() -> None:
    rules = [config_from_dict(gateway(entry)).gateway.routes[0].price.per for entry in (
        {**API, "per": "request"}, BYTES, {"path": "/f", "upstream": "http://u", "per": "free"},
        {k: v for k, v in API.items()})]
    timed = config_from_dict(gateway({**BYTES, "per": "second", "quantity": 60}))
    assert timed.gateway.routes[0].price == Price("second", 1, 500, 60)
    assert rules == ["request", "byte", "free", "request"]  # the default: per request


@pytest.mark.parametrize(("entry", "message"), [
    ({**API, "path": "api"}, "routes[0].path: found 'api' (a string), expected a URL path"),
    ({**API, "path": "/a/../b"}, "routes[0].path: found '/a/../b'"),
    ({**API, "path": "/a?x=1"}, "routes[0].path: found '/a?x=1'"),
    ({**API, "path": "/paychan/x"}, "routes[0].path: found '/paychan/x', which is the "
                                    "channel endpoint"),
    ({"upstream": "http://u", "price": 1}, "routes[0].path: found null"),
    ({**API, "upstream": "ftp://x"}, "routes[0].upstream: found 'ftp://x'"),
    ({**API, "upstream": "http://h:99999"}, "routes[0].upstream: found 'http://h:99999'"),
    ({**API, "upstream": "http://h/?q=1"}, "routes[0].upstream: found 'http://h/?q=1'"),
    ({**API, "per": "minute"}, "routes[0].per: found 'minute' (a string), expected one of: "
                               "request, byte, second, free"),
    ({**API, "per": "second"}, "routes[0].reserve: missing, expected the sat a request "
                               "pre-pays with per: second"),
    ({**API, "price": 0}, "routes[0].price: found 0, expected an integer ≥ 1"),
    ({"path": "/a", "upstream": "http://u"}, "routes[0].price: missing"),
    ({**API, "reserve": 50}, "routes[0].reserve: found 50 (a number) with per: request"),
    ({**API, "quantity": 5}, "routes[0].quantity: found 5 (a number) with per: request"),
    ({**BYTES, "reserve": None}, "routes[0].reserve: missing, expected the sat a request "
                                 "pre-pays"),
    ({**BYTES, "reserve": 0}, "routes[0].reserve: found 0, expected an integer ≥ 1"),
    ({**BYTES, "quantity": 0}, "routes[0].quantity: found 0, expected an integer ≥ 1"),
    ({"path": "/f", "upstream": "http://u", "per": "free", "price": 3},
     "routes[0].price: found 3 (a number) on a free route"),
    ({**API, "timeout": 0}, "routes[0].timeout: found 0 (a number), expected a number of "
                            "seconds > 0"),
    ({**API, "prise": 1}, "routes[0].prise: unknown key; did you mean "
                          "'gateway.routes[0].price'?"),
    ("/api", "routes[0]: found '/api' (a string), expected a mapping"),
])
def test_a_wrong_route_is_named_by_its_key(entry: Any, message: str) -> None:
    assert f"gateway.{message}" in error_of(gateway(entry))


def test_every_wrong_key_of_a_route_is_reported_at_once() -> None:
    error = error_of(gateway({"path": "x", "upstream": "ftp://x", "per": "byte", "price": 0}))
    for key in ("path", "upstream", "price", "reserve"):
        assert f"gateway.routes[0].{key}:" in error


@pytest.mark.parametrize(("data", "message"), [
    (gateway(API, {**API, "path": "/api/"}), "gateway.routes[1].path: found '/api/', already "
                                             "the path of another route ('/api')"),
    (gateway(), "gateway.routes: found none, expected at least one route"),
    ({"gateway": {"enabled": True, "routes": [API]}},
     "gateway.enabled: found true without server.enabled"),
    (gateway(API, server={"min_increment": 20}), "gateway.routes[0].price: found 10, "
                                                 "expected at least server.min_increment (20)"),
    (gateway({**BYTES, "reserve": 15}, server={"min_increment": 20}),
     "gateway.routes[0].reserve: found 15, expected at least server.min_increment"),
    (gateway(API, listen="127.0.0.1:4242"), "gateway.listen: found '127.0.0.1:4242', already "
                                            "used by server.listen"),
    (gateway(API, listen="nowhere"), "gateway.listen: found 'nowhere'"),
    (gateway(API, endpoint="paychan"), "gateway.endpoint: found 'paychan'"),
    (gateway(API, max_requests_per_session=0), "gateway.max_requests_per_session: found 0, "
                                               "expected an integer ≥ 1"),
    (gateway(API, routes={"path": "/a"}), "gateway.routes: found a mapping, expected a list"),
])
def test_a_wrong_gateway_is_refused(data: dict[str, Any], message: str) -> None:
    assert message in error_of(data)


def test_a_disabled_gateway_needs_no_server_nor_routes() -> None:
    assert not config_from_dict({"gateway": {"enabled": False}}).gateway.enabled


def test_a_gateway_runs_beside_reanchoring() -> None:
    """Its credit carries across re-anchors (store/credit.py counts the generations'
    payouts), so channels that live on may sell through it."""
    config = config_from_dict(gateway(API, server={"reanchoring": True, "payout_above": 1000}))
    assert config.gateway.enabled and config.server.policy.reanchoring
