"""Fuzzing the sans-IO machines: honest sessions of every contract version (open, payments,
a lost connection, a resume, close; v4's key-path close), recorded by Pump through the real
codec, are replayed over a hostile link: bytes flipped, frames truncated or extended, fields
of the decoded message changed (amounts, signatures and their hash types, keys, txs, the
MuSig2 fields 1001-1003), frames dropped, duplicated, reordered, replayed (also from before
the resume) or taken from another channel's session, and another instance settling the
channel. At every call the properties of tests/channel/fuzz.py's `Watch` hold: a message
never raises; every payment the server stores or reports verifies against the contract and
only grows, is stored before it is reported, and nothing is acknowledged after the
settlement was decided or after ERROR; the client signs no more than its application asked,
and co-signs or accepts no settlement paying it less than its change; after Disconnect a
machine does nothing more.

`quick` (the default): a derandomized set of 150 examples per test, the same every run
(seconds). `nice env HYPOTHESIS_PROFILE=deep .venv/bin/pytest -s tests/channel/test_fuzz.py`
searches 10,000 random examples per test (minutes) and prints what it ran; a failure prints
its plan and a `@reproduce_failure` blob (or rerun with `--hypothesis-seed=N`).
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bitcoind_paychan.bitcoin.tx import Transaction
from bitcoind_paychan.channel import client as client_module
from bitcoind_paychan.channel.contract import Branch, Contract
from bitcoind_paychan.channel.effects import Send
from bitcoind_paychan.channel.kinds.registry import VERSIONS, kind_of
from bitcoind_paychan.channel.records import ChannelStatus
from bitcoind_paychan.channel.server import ServerChannel
from bitcoind_paychan.wire import decode_message, pb
from tests.channel.fuzz import (
    TALLY,
    TO_CLIENT,
    TO_SERVER,
    FuzzPump,
    Mutation,
    Violation,
    honest_frames,
    mutations,
    no_draw,
    session,
)

T = pb.TwoWayChannelMessage
DEEP = os.environ.get("HYPOTHESIS_PROFILE") == "deep"
FUZZ = settings(deadline=None, database=None, derandomize=True, max_examples=150,
                print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
if DEEP:
    FUZZ = settings(FUZZ, derandomize=False, max_examples=10_000)
    pytestmark = pytest.mark.timeout(0)


@pytest.fixture(scope="module", autouse=True)
def report() -> Iterator[None]:
    """What the module ran, for the log (`-s` shows it)."""
    started = time.monotonic()
    yield
    print(f"\nfuzz: {TALLY} in {time.monotonic() - started:.1f} s")


@functools.cache
def foreign() -> list[bytes]:
    """Frames of other channels (another client key), of every version."""
    return [p for v in VERSIONS for frames in honest_frames(v, 1).values() for p in frames]


@functools.cache
def frame_counts(version: int) -> int:
    return max(len(frames) for frames in honest_frames(version, 0).values())


@pytest.mark.parametrize("version", VERSIONS)
def test_the_honest_session_settles_what_was_paid(version: int) -> None:
    """The seed itself: both sides end CLOSING on one settlement paying the server all that
    was paid (v4: by key path), so the properties watch a session that gets everywhere."""
    pump = session(version, [], no_draw, [])
    (server,), (client,) = pump.server_store.values(), pump.client_store.values()
    assert server.status is client.status is ChannelStatus.CLOSING
    assert server.paid == client.paid > sum((20_000, 7_000, 3_000, 5_000, 20_000))
    settlement = Transaction.parse(server.settlement_tx or b"")
    assert settlement.serialize() == client.settlement_tx
    branch = server.contract.kind.unlocking(settlement)[1]
    assert (branch is Branch.KEY_PATH) is server.contract.kind.capabilities.key_path_close
    assert client.payments == server.payments == 6  # initial, 4 paid, 1 after the resume


def run_plan(version: int, direction: tuple[str, ...], data: st.DataObject) -> FuzzPump:
    TALLY.examples += 1
    plan = data.draw(mutations(direction, frame_counts(version) + 1), label="plan")
    return session(version, plan, data.draw, foreign())


@pytest.mark.parametrize("version", VERSIONS)
@FUZZ
@given(data=st.data())
def test_server_fed_mutated_client_frames(version: int, data: st.DataObject) -> None:
    run_plan(version, (TO_SERVER,), data)


@pytest.mark.parametrize("version", VERSIONS)
@FUZZ
@given(data=st.data())
def test_client_fed_mutated_server_frames(version: int, data: st.DataObject) -> None:
    run_plan(version, (TO_CLIENT,), data)


@pytest.mark.parametrize("version", VERSIONS)
@FUZZ
@given(data=st.data())
def test_both_ways_mutated(version: int, data: st.DataObject) -> None:
    run_plan(version, (TO_SERVER, TO_CLIENT), data)


# -- the properties can fail: each catches the machine bug it is there for ----------------


def first(version: int, direction: str, kind: int) -> tuple[int, bytes]:
    """The index and payload of the first frame of type `kind` sent `direction`."""
    frames = honest_frames(version, 0)[direction]
    return next((i, p) for i, p in enumerate(frames) if decode_message(p).type == kind)


@pytest.mark.parametrize("version", VERSIONS)
def test_a_server_taking_a_bad_signature_is_caught(version: int,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Contract, "check_payment", lambda self, change, signature: None)
    index, payload = first(version, TO_SERVER, T.UPDATE_PAYMENT)
    in_signature = payload.index(decode_message(payload).update_payment.signature) + 10 << 8
    with pytest.raises(Violation, match="does not verify"):
        session(version, [Mutation(TO_SERVER, index, "flip", in_signature)], no_draw, [])


@pytest.mark.parametrize("version", VERSIONS)
def test_a_client_taking_a_short_settlement_is_caught(version: int,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client_module, "check_settlement", lambda record, settlement: None)
    monkeypatch.setattr(client_module, "check_key_path_proposal",  # v4
                        lambda record, proposal: None)
    index, payload = first(version, TO_CLIENT, T.CLOSE)
    message = decode_message(payload)
    key_path = bool(message.musig_settlement)
    tx = Transaction.parse(message.musig_settlement if key_path else message.settlement.tx)
    value = tx.outputs[0].value.to_bytes(8, "little")
    top = max(i for i, b in enumerate(value) if b)
    at, mask = payload.index(value) + top, 1 << (value[top].bit_length() - 1)  # less change
    what = "co-signed" if key_path else "accepted"
    with pytest.raises(Violation, match=f"client {what} a settlement paying it less"):
        session(version, [Mutation(TO_CLIENT, index, "flip", at << 8 | mask)],
                no_draw, [])


@pytest.mark.parametrize("version", VERSIONS)
def test_a_server_paid_after_the_settlement_is_caught(version: int,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ServerChannel, "_on_settlement_decided", lambda self, record: [])
    index, _ = first(version, TO_SERVER, T.UPDATE_PAYMENT)
    with pytest.raises(Violation, match="after the settlement"):
        session(version, [Mutation(TO_SERVER, index, "decide")], no_draw, [])


@pytest.mark.parametrize("version", VERSIONS)
def test_only_a_key_path_close_carries_the_extension_fields(version: int) -> None:
    """A bitcoinj peer (versions 1 and 2) never sees fields 1001-1003: no frame of an honest
    session of a kind without the key-path close sets one, in either direction."""
    pump = session(version, [], no_draw, [])
    sent = [e.message for e in [*pump.client_log, *pump.server_log] if isinstance(e, Send)]
    extended = [m for m in sent if any(m.HasField(f) for f in
                                       ("musig_nonce", "musig_partial_signature",
                                        "musig_settlement"))]
    key_path = kind_of(version).capabilities.key_path_close
    assert bool(extended) is key_path, [m.type for m in extended]
