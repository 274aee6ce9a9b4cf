"""The server-capacity load: payments signed before timing, replayed to a server.

For each stored client channel (read from the client's store once its owner closed it), sign
`payments` UPDATE_PAYMENT frames ahead, resume the channel on a raw connection (v3 proof
included), then, timed, keep `window` frames in flight per connection until every one is
acknowledged. The load's own cost is framing and socket writes only, so the server's CPU per
payment is measured nearly alone.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from bitcoind_paychan.channel import messages
from bitcoind_paychan.channel.machine import resume_digest
from bitcoind_paychan.channel.records import ChannelRecord, ChannelStatus, Role
from bitcoind_paychan.store import SQLiteStore
from bitcoind_paychan.transport.stream import MessageStream, open_connection
from bitcoind_paychan.wire import encode_frame, encode_message, pb

T = pb.TwoWayChannelMessage


def presign(record: ChannelRecord, payments: int, amount: int, info: bytes) -> list[bytes]:
    """`payments` framed UPDATE_PAYMENTs, each paying `amount` more than the one before."""
    frames, change = [], record.change
    for _ in range(payments):
        change -= amount
        signature = record.contract.sign_payment(record.key, change)
        frames.append(encode_frame(encode_message(messages.update_payment(change, signature,
                                                                          info))))
    return frames


async def resume(address: tuple[str, int], record: ChannelRecord) -> MessageStream:
    """A connection on which the server has taken `record`'s channel back (proof acked)."""
    stream = await open_connection(*address, timeout=10)
    await stream.send(messages.client_version(record.version, 86_340, record.contract_txid))
    version = await _expect(stream, T.SERVER_VERSION)
    await _expect(stream, T.CHANNEL_OPEN)
    proof = record.key.sign(resume_digest(version.server_version.resume_challenge,
                                          record.contract_txid))
    await stream.send(messages.update_payment(record.change, record.signature,
                                              resume_proof=proof))
    await _expect(stream, T.PAYMENT_ACK)
    return stream


async def _expect(stream: MessageStream, wanted: int) -> T:
    message = await stream.receive(10)
    if message is None or message.type != wanted:
        name = T.MessageType.Name(wanted)  # type: ignore[arg-type]
        raise RuntimeError(f"the server answered {message} instead of {name}")
    return message


async def replay(stream: MessageStream, frames: list[bytes], window: int) -> list[float]:
    """Send `frames` keeping `window` unacknowledged; when all are acknowledged, return each
    one's latency (ms, from its write to its ack)."""
    sent = min(window, len(frames))
    sent_at = [time.perf_counter()] * sent
    await stream.write_framed(b"".join(frames[:sent]))
    latencies = []
    for index in range(len(frames)):
        message = await stream.receive(30)
        if message is None or message.type != T.PAYMENT_ACK:
            raise RuntimeError(f"the server answered {message} instead of PAYMENT_ACK")
        latencies.append((time.perf_counter() - sent_at[index]) * 1000)
        if sent < len(frames):
            sent_at.append(time.perf_counter())
            await stream.write_framed(frames[sent])
            sent += 1
    return latencies


async def load(db: Path, address: tuple[str, int], payments: int, amount: int, info: bytes,
               window: int) -> dict[str, Any]:
    with SQLiteStore(db) as store:
        records = store.channels(Role.CLIENT, (ChannelStatus.OPEN,))
    frames = [presign(record, payments, amount, info) for record in records]
    streams = [await resume(address, record) for record in records]
    started, cpu = time.perf_counter(), time.process_time()
    latencies = await asyncio.gather(*(replay(stream, f, window)
                                       for stream, f in zip(streams, frames, strict=True)))
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    for stream in streams:
        await stream.close()
    return {"latencies_ms": [ms for per_channel in latencies for ms in per_channel],
            "wall_s": wall, "cpu_us": cpu / (len(records) * payments) * 1e6}
