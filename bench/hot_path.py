"""CPU per payment of the two state machines alone, in one process (no I/O): the client signs
(`ClientChannel.pay`), the frame is encoded and decoded, the server verifies
(`ServerChannel.receive_pipelined`, W payments together with --window W), and its ack goes
back the same way. Prints µs per payment for each part, the server's bare path (`server_floor`:
those parts and SQLite commits of 100), and with --profile the top functions.
Usage: python bench/hot_path.py [--payments N] [--window W] [--profile] [--json]
(--json prints one JSON object last)
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import sys
import tempfile
import time
from pathlib import Path

from hardware import describe, machine  # bench/hardware.py

from bitcoind_paychan.bitcoin.keys import PrivateKey
from bitcoind_paychan.bitcoin.tx import OutPoint, Transaction, TxIn, TxOut
from bitcoind_paychan.channel.client import ClientChannel, ClientPolicy
from bitcoind_paychan.channel.effects import (
    CheckContract,
    Effect,
    FundContract,
    PaymentReceived,
    PrepareSettlement,
    Send,
    StorePayment,
)
from bitcoind_paychan.channel.messages import update_payment
from bitcoind_paychan.channel.server import ServerChannel, ServerPolicy
from bitcoind_paychan.store import SQLiteStore
from bitcoind_paychan.store.base import Payment
from bitcoind_paychan.wire import FrameDecoder, decode_message, encode_frame, encode_message

NOW = 1_700_000_000
VALUE = 100_000_000


def opened(window: int = 1) -> tuple[ClientChannel, ServerChannel]:
    """A v3 channel open between two machines (the contract funded by a made-up coin)."""
    client = ClientChannel(ClientPolicy(VALUE, payment_window=window), PrivateKey.generate(),
                           NOW, 3)
    server = ServerChannel(ServerPolicy(), PrivateKey.generate(), NOW)
    queue: list[tuple[str, Effect]] = [("c", e) for e in client.start()]
    while queue:
        side, effect = queue.pop(0)
        if isinstance(effect, Send):
            to = server if side == "c" else client
            queue += [("s" if side == "c" else "c", e) for e in to.receive(effect.message)]
        elif isinstance(effect, FundContract):
            coin = TxIn(OutPoint(bytes(32), 0), b"", 0xFFFFFFFD, (bytes(71), bytes(33)))
            tx = Transaction(2, (coin,), (TxOut(effect.value, effect.script_pubkey),), 0)
            queue += [("c", e) for e in client.contract_funded(tx)]
        elif isinstance(effect, CheckContract):
            queue += [("s", e) for e in server.contract_checked(None)]
        elif isinstance(effect, PrepareSettlement):
            raise RuntimeError("the channel closed while opening")
    return client, server


def sent(effects: list[Effect]) -> bytes:
    return next(encode_frame(encode_message(e.message)) for e in effects if isinstance(e, Send))


def server_floor(payments: int, directory: Path, batch: int = 100) -> float:
    """µs of CPU per payment of the bare server path, in one process: each UPDATE_PAYMENT
    decoded and checked by the machine (its sighash from the cached prefix, its signature
    verified), its ack encoded, and the payments (one channel's) stored by an SQLiteStore in
    commits of `batch` (one fsync each): what a server must do, without its event loop, sockets or
    threads. Signed before timing."""
    client, server = opened()
    record = client.record
    assert record is not None and server.record is not None
    frames, change = [], record.change
    for _ in range(payments):
        change -= 1000
        frames.append(encode_message(update_payment(
            change, record.contract.sign_payment(record.key, change))))
    with SQLiteStore(directory / "floor.db") as store:
        store.put(server.record)
        stores: list[Payment] = []
        started = time.process_time()
        for frame in frames:
            for effect in server.receive(decode_message(frame)):
                if isinstance(effect, StorePayment):
                    stores.append((effect.record, effect.amount, effect.info))
                elif isinstance(effect, PaymentReceived):
                    for answer in server.payment_answered(effect):
                        assert isinstance(answer, Send)
                        encode_frame(encode_message(answer.message))
            if len(stores) == batch:
                store.record_payments(stores)
                stores = []
        if stores:
            store.record_payments(stores)
        return (time.process_time() - started) / payments * 1e6


def measure(payments: int, window: int = 1) -> dict[str, float]:
    """CPU per payment by part; `window` payments signed, then received together by the server
    (`receive_pipelined`: the ECDSA check once per batch), then their acks."""
    client, server = opened(window)
    decoder = FrameDecoder()
    names = ("client_pay", "encode", "decode", "server_receive", "ack_round_trip")
    totals = [0.0] * len(names)
    clock = time.process_time
    for _ in range(payments // window):
        t0 = clock()
        effects = [client.pay(1000) for _ in range(window)]
        t1 = clock()
        frames = b"".join(sent(e) for e in effects)
        t2 = clock()
        received = [decode_message(payload) for payload in decoder.feed(frames)]
        t3 = clock()
        answer, taken = server.receive_pipelined(received)
        assert taken == window
        answer = [a for e in answer for a in (
            server.payment_answered(e) if isinstance(e, PaymentReceived) else [e])]
        t4 = clock()
        acks = b"".join(encode_frame(encode_message(e.message)) for e in answer
                        if isinstance(e, Send))
        for payload in decoder.feed(acks):
            client.receive(decode_message(payload))
        t5 = clock()
        for index, spent in enumerate((t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
            totals[index] += spent
    done = payments // window * window
    per = {name: seconds / done * 1e6 for name, seconds in zip(names, totals, strict=True)}
    per["total"] = sum(per.values())
    return per


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--payments", type=int, default=5000)
    parser.add_argument("--window", type=int, default=1, choices=range(1, 65),
                        metavar="W", help="payments the server receives together (1..64)")
    parser.add_argument("--profile", action="store_true", help="print the top functions")
    parser.add_argument("--json", action="store_true", help="print one JSON object last")
    args = parser.parse_args(argv)
    if args.profile:
        profiler = cProfile.Profile()
        profiler.runcall(measure, args.payments, args.window)
        pstats.Stats(profiler).sort_stats("tottime").print_stats(15)
    per = measure(args.payments, args.window)
    print(f"two machines, {args.payments} payments, window {args.window}, µs of CPU per payment:")
    for part, us in per.items():
        print(f"  {part:16} {us:8.1f}")
    with tempfile.TemporaryDirectory(prefix="paychan-floor-") as tmp:
        per["server_floor"] = server_floor(args.payments, Path(tmp))
    print(f"  server floor     {per['server_floor']:8.1f}   (decode, machine, ack, SQLite "
          "commits of 100: the bare server path, no loop, sockets or threads)")
    here = machine()
    print(f"  machine          {describe(here)}")
    if args.json:
        print(json.dumps({**{k: round(v, 1) for k, v in per.items()}, **here}))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
