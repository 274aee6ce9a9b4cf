"""The client's link (transport/paidhttp): a session the endpoint no longer knows ends the
stream the manager reads, and nothing more is sent through it."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from bitcoind_paychan.channel import messages
from bitcoind_paychan.transport import encode
from bitcoind_paychan.transport.paidhttp import HttpLink
from bitcoind_paychan.wire import pb
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
