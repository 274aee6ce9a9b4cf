"""Routes, price rules, the headers that go upstream and back, and credit: pure parts."""

from __future__ import annotations

import asyncio

import pytest
from multidict import CIMultiDict

from bitcoind_paychan.gateway import Credit, Price, Route, metered, route_for
from bitcoind_paychan.gateway.routes import unsafe_path
from bitcoind_paychan.gateway.upstream import request_headers, response_headers
from bitcoind_paychan.store import MemoryStore
from tests.store.helpers import Channel

ROUTES = (Route("/", "http://up/root", Price("free")),
          Route("/api", "http://up/v1", Price("request", 10)),
          Route("/api/big", "http://big", Price("byte", 1, reserve=100, quantity=1000)))


@pytest.mark.parametrize(("path", "route", "url"), [
    ("/api", "/api", "http://up/v1"),
    ("/api/x", "/api", "http://up/v1/x"),
    ("/apix", "/", "http://up/root/apix"),
    ("/api/big/file", "/api/big", "http://big/file"),
    ("/api/a b", "/api", "http://up/v1/a%20b"),
])
def test_the_longest_covering_route_serves_a_path(path: str, route: str, url: str) -> None:
    found = route_for(ROUTES, path)
    assert found is not None and found.path == route
    assert found.upstream_url(path, "") == url
    assert found.upstream_url(path, "q=%2F") == url + "?q=%2F"


def test_no_route_and_unsafe_paths() -> None:
    assert route_for(ROUTES[1:], "/other") is None
    for path in ("/free/../api", "/a/./b", "/a\\b"):
        assert unsafe_path(path) is not None
    assert unsafe_path("/a/..b/c.d") is None


def test_a_price_costs_rounded_up_and_buys_rounded_down() -> None:
    per_kb = Price("byte", 3, reserve=30, quantity=1000)
    assert [per_kb.cost(n) for n in (0, 1, 1000, 1001)] == [0, 1, 3, 4]  # proportional
    assert per_kb.units_for(7) == 2333 and per_kb.cost(2333) == 7  # never more than paid
    assert per_kb.needed == 30
    assert Price("request", 10).needed == 10 and Price("free").free


def test_the_gateways_and_the_payment_headers_never_go_upstream() -> None:
    sent = request_headers(CIMultiDict({
        "Authorization": "Payment abc", "Paychan-Session": "s", "Payment-Receipt": "r",
        "Payment-Authorization": "Payment x", "Connection": "keep-alive, X-Hop",
        "X-Hop": "1", "Host": "gw", "Accept": "*/*", "X-Forwarded-For": "10.0.0.1",
        "Content-Length": "5"}), "192.0.2.1", "https", trusted=True)
    assert dict(sent) == {"Accept": "*/*", "X-Forwarded-For": "10.0.0.1, 192.0.2.1",
                          "X-Forwarded-Proto": "https"}
    untrusted = request_headers(CIMultiDict({"X-Forwarded-For": "10.0.0.1"}), "192.0.2.1",
                                "http")
    assert untrusted["X-Forwarded-For"] == "192.0.2.1"  # a client's own claim is dropped
    other = request_headers(CIMultiDict({"Authorization": "Bearer t"}), None, "http")
    assert other["Authorization"] == "Bearer t"  # the client's own credentials do go


def test_an_upstream_cannot_answer_for_the_gateway() -> None:
    back = response_headers(CIMultiDict({
        "Payment-Receipt": "forged", "WWW-Authenticate": "Payment id=x", "Paychan-Closed": "1",
        "Transfer-Encoding": "chunked", "Content-Type": "text/plain",
        "Content-Length": "3"}))
    assert dict(back) == {"Content-Type": "text/plain"}
    basic = response_headers(CIMultiDict({"WWW-Authenticate": "Basic realm=x"}))
    assert basic["WWW-Authenticate"] == "Basic realm=x"


def test_credit_is_held_for_a_request_and_given_back() -> None:
    store, channel = MemoryStore(), Channel()
    record = channel.record()
    store.put(record)
    credit, c = Credit(store), channel.txid

    def pay(amount: int) -> int:
        nonlocal record
        record = channel.pay(record, amount)
        store.record_payment(record, amount)  # stored: credit at once
        return amount

    async def main() -> None:
        assert await credit.hold(c, pay(50), 100) is None and await credit.of(c) == 50  # kept
        assert await credit.hold(c, pay(60), 100) == 100 and await credit.of(c) == 10
        assert await credit.hold(c, pay(5), 10, everything=True) == 15
        assert await credit.of(c) == 0
        await credit.give_back(c, 7)
        assert await credit.of(c) == 7 and await credit.of("other") == 0
        with pytest.raises(ValueError, match="never charged more than it held"):
            await credit.give_back(c, -1)

    asyncio.run(main())


@pytest.mark.parametrize(("pending", "room", "ended", "size"), [
    (b"data: a\n\ndata: b\n\n", 100, False, 18),  # both events fit
    (b"data: a\n\ndata: b\n\n", 17, False, 9),  # only the first one
    (b"data: a\r\n\r\ndata: b\r\r", 100, False, 20),  # CRLF and CR blank lines end them too
    (b"data: a\n\ndata: b", 100, False, 9),  # the second is not whole yet
    (b"data: b", 100, True, 7),  # ...unless the upstream ended: its last part then
    (b"data: a\n\n", 8, False, 0),  # no whole event fits: wait for credit
])
def test_an_sse_stream_is_cut_only_between_events(pending: bytes, room: int, ended: bool,
                                                  size: int) -> None:
    assert metered._next_part(pending, room, True, ended) == size
    assert metered._next_part(pending, room, False, ended) == min(room, len(pending))
