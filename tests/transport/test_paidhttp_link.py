"""The client's link (transport/paidhttp): a session the endpoint no longer knows ends the
stream the manager reads, and nothing more is sent through it; a payment carried in a
request keeps its place among the frames POSTed (against an endpoint that records the
order, driven by events)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from bitcoind_paychan.channel import messages
from bitcoind_paychan.errors import LocalProtocolError
from bitcoind_paychan.transport import encode
from bitcoind_paychan.transport.base import decode
from bitcoind_paychan.transport.http import WebServer
from bitcoind_paychan.transport.paidhttp import HttpLink
from bitcoind_paychan.transport.paidhttp.wire import FRAMES_TYPE, SESSION_HEADER, split_frames
from bitcoind_paychan.wire import pb
from regtest.waiting import until
from tests.gateway.conftest import bench
from tests.service.conftest import MemSides

T = pb.TwoWayChannelMessage


def test_a_session_the_endpoint_does_not_know_ends_the_stream(mem_sides: MemSides) -> None:
    async def main() -> None:
        async with bench(mem_sides) as gateway, aiohttp.ClientSession() as http:
            link = HttpLink(http, gateway.url + gateway.gateway.endpoint_path, 10)
            link.session = "expired"
            await link.send_frames(encode([messages.payment_ack()]))
            assert await link.stream.receive(10) is None  # the manager sees the end
            assert link.closed
            with pytest.raises(ConnectionError, match="has ended"):
                await link.send_frames(encode([messages.payment_ack()]))

    asyncio.run(main())


def test_the_expected_payment_is_kept_for_the_request() -> None:
    async def main() -> None:
        async with aiohttp.ClientSession() as http:
            link = HttpLink(http, "http://127.0.0.1:9/paychan", 10)  # nothing is POSTed
            expected = link.expect_payment()
            payment = T(type=T.UPDATE_PAYMENT)
            payment.update_payment.client_change_value = 5_000
            payment.update_payment.signature = b"\x30"
            await link.send_frames(encode([payment]))
            assert expected.result() == encode([payment])[0]
            assert link.session is None and not link.closed

    asyncio.run(main())


@dataclasses.dataclass
class Endpoint:
    """A channel endpoint that records what reaches it, in order: each POST's frames (by
    type) and each request carrying a payment ("request"); the first POST is answered only
    once `release` is set."""

    url: str = ""
    seen: list[str] = dataclasses.field(default_factory=list)
    release: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)

    def app(self) -> web.Application:
        async def post(request: web.Request) -> web.Response:
            frames = split_frames(await request.read())
            self.seen += [T.MessageType.Name(decode(frame).type) for frame in frames]
            if len(self.seen) == len(frames):
                await self.release.wait()
            return web.Response(body=b"", content_type=FRAMES_TYPE,
                                headers={SESSION_HEADER: "s"})

        async def paid(request: web.Request) -> web.Response:
            self.seen.append("request")
            return web.Response(text="paid")

        app = web.Application()
        app.router.add_post("/paychan", post)
        app.router.add_get("/paid", paid)
        return app


@contextlib.asynccontextmanager
async def endpoint() -> AsyncIterator[tuple[Endpoint, HttpLink, aiohttp.ClientSession]]:
    found = Endpoint()
    server = WebServer(found.app(), "127.0.0.1", 0)
    host, port = await server.start()
    found.url = f"http://{host}:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            yield found, HttpLink(http, found.url + "/paychan", 10), http
    finally:
        found.release.set()
        await server.stop()


def payment(change: int = 5_000) -> T:
    return messages.update_payment(change, b"\x30")


def signed() -> T:
    return messages.reanchor_signed(b"tx", 1, 2, 3, 4, b"\x30", b"\x30")


def test_a_payment_carried_in_a_request_keeps_its_place_among_the_frames_posted() -> None:
    """The server reads the session's frames in the order sent (a re-anchor's R after the
    payments before it, before those after it): the payment goes only once what was POSTed
    before it is answered, and what was sent after it only once its request is answered."""
    async def main() -> None:
        async with endpoint() as (server, link, http):
            await link.send_frames(encode([messages.reanchor_propose(0, 0)]))
            await until(lambda: server.seen, what="the first POST")  # held there
            expected = link.expect_payment()
            await link.send_frames(encode([payment()]))
            await link.send_frames(encode([signed()]))
            assert not expected.done()  # the POST before it is not answered yet
            server.release.set()
            frame = await expected
            assert decode(frame).type == T.UPDATE_PAYMENT
            assert server.seen == ["REANCHOR_PROPOSE"]  # R waits for the payment's request
            async with http.get(server.url + "/paid") as response:  # carrying the payment
                assert response.status == 200
            link.answered()
            await until(lambda: len(server.seen) == 3, what="R's POST")
            assert server.seen == ["REANCHOR_PROPOSE", "request", "REANCHOR_SIGNED"]

    asyncio.run(main())


def test_what_follows_a_payment_whose_request_was_not_answered_is_never_sent() -> None:
    async def main() -> None:
        async with endpoint() as (server, link, _):
            server.release.set()
            expected = link.expect_payment()
            await link.send_frames(encode([payment(), signed()]))  # one write: split there
            assert decode(await expected).type == T.UPDATE_PAYMENT  # nothing before it
            await link.close()  # its request failed: the server may not have read it
            assert await link.stream.receive(10) is None  # the session is over
            assert server.seen == []  # and R was not POSTed after it

    asyncio.run(main())


def test_a_payment_behind_a_post_of_a_session_that_ends_is_never_handed_over() -> None:
    async def main() -> None:
        async with endpoint() as (server, link, _):
            await link.send_frames(encode([messages.reanchor_propose(0, 0)]))
            await until(lambda: server.seen, what="the first POST")
            expected = link.expect_payment()
            await link.send_frames(encode([payment()]))
            await link.close()
            server.release.set()
            assert await link.stream.receive(10) is None
            assert expected.cancelled()  # the payment stays stored; a resume sends it

    asyncio.run(main())


def test_payments_are_kept_one_at_a_time_each_after_the_one_before_was_answered() -> None:
    """Two payments on one channel at once (two Payer.pay): the second is kept only once the
    first's request was answered (`keep`), so each goes in its turn; keeping a second
    without it is refused, not a session stuck for good."""
    async def main() -> None:
        async with endpoint() as (server, link, _):
            server.release.set()
            kept: list[bytes] = []

            async def pay(change: int) -> None:  # as Payer.pay and PendingPayment.settle
                token = await link.keep()
                expected = link.expect_payment()
                with pytest.raises(LocalProtocolError, match="one at a time"):
                    link.expect_payment()
                await link.send_frames(encode([payment(change)]))
                kept.append(await expected)
                await asyncio.sleep(0)  # its request, answered
                link.answered(token)  # releases `keeping`

            await asyncio.gather(pay(5_000), pay(4_000))
            assert [decode(frame).update_payment.client_change_value for frame in kept] == [
                5_000, 4_000]
            await link.close()
            assert await link.stream.receive(10) is None  # the session still ends

    asyncio.run(main())


def test_a_late_answer_or_release_does_not_touch_the_next_holders_payment() -> None:
    async def main() -> None:
        async with endpoint() as (server, link, _):
            server.release.set()
            first = await link.keep()
            link.kept_done()  # the session's end releases whoever holds it
            second = await link.keep()
            expected = link.expect_payment()
            await link.send_frames(encode([payment(), signed()]))
            assert decode(await expected).type == T.UPDATE_PAYMENT
            link.kept_done(first)  # late: the first's `except`
            link.answered(first)  # late: the first's settle
            assert link.keeping.locked()  # still the second's
            await asyncio.sleep(0.05)
            assert server.seen == []  # R still waits for the second's request
            link.answered(second)
            assert not link.keeping.locked()
            await until(lambda: server.seen == ["REANCHOR_SIGNED"], what="R after it")

    asyncio.run(main())


def test_a_kept_payment_whose_request_gave_up_before_its_turn_goes_as_credit() -> None:
    """Payer.pay cancelled while its payment waits behind a POST: when its turn comes it is
    POSTed like a top-up (credit), and what follows goes after it; nothing is stuck."""
    async def main() -> None:
        async with endpoint() as (server, link, _):
            await link.send_frames(encode([messages.reanchor_propose(0, 0)]))
            await until(lambda: server.seen, what="the first POST")  # held there
            token = await link.keep()
            expected = link.expect_payment()
            await link.send_frames(encode([payment(), signed()]))
            assert not expected.done()  # kept, behind the held POST
            expected.cancel()  # the request gave up
            link.kept_done(token)
            server.release.set()
            await until(lambda: len(server.seen) == 3, what="the rest POSTed")
            assert server.seen == ["REANCHOR_PROPOSE", "UPDATE_PAYMENT", "REANCHOR_SIGNED"]
            assert not link.closed

    asyncio.run(main())
