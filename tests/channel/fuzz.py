"""The fuzz tier's harness: an honest session (Pump: open, payments, a resume, close) whose
frames cross a hostile link that mutates, drops, duplicates, reorders and replays them, with
the money properties checked at every call into either machine.

- `Link`: the mutations a plan asks for, applied to the n-th frame each way (counted over
  the whole run, so a replayed frame may come from the session before the resume).
- `Checked`: a machine whose every call (message or input) is observed by a `Watch`, which
  raises `Violation` the moment an effect breaks a property.
- `Session`: the honest script (the seed), run over a `FuzzPump`.
"""

from __future__ import annotations

import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, TypeVar

from google.protobuf.message import Message
from hypothesis import strategies as st

from bitcoind_paychan.bitcoin.hashes import sha256
from bitcoind_paychan.bitcoin.keys import PrivateKey
from bitcoind_paychan.bitcoin.tx import OutPoint, Transaction, TxIn, TxOut
from bitcoind_paychan.channel import messages
from bitcoind_paychan.channel.client import ClientChannel, ClientPolicy
from bitcoind_paychan.channel.contract import DUST
from bitcoind_paychan.channel.effects import (
    Disconnect,
    Effect,
    FundContract,
    FundSettlement,
    PaymentReceived,
    Send,
    StoreChannel,
    StorePayment,
)
from bitcoind_paychan.channel.machine import Input, ProtocolMachine
from bitcoind_paychan.channel.records import ChannelRecord, ChannelStatus
from bitcoind_paychan.channel.server import ServerChannel, ServerPolicy
from bitcoind_paychan.errors import PaychanError, RemoteProtocolError
from bitcoind_paychan.wire import decode_message, encode_message, pb
from regtest.chainrules import spend_problem
from tests.channel.model.checks import payment_verifies, settlement_valid
from tests.channel.pump import PAYOUT, Pump

T = pb.TwoWayChannelMessage
X = TypeVar("X")
NOW, VALUE = 1_700_000_000, 500_000
ANY_TIME = 2**32
SERVER_KEY = PrivateKey(sha256(b"fuzz server"))
CLIENT_POLICY = ClientPolicy(VALUE)
TO_SERVER, TO_CLIENT = "to server", "to client"
HASHTYPES = (0x00, 0x01, 0x02, 0x03, 0x41, 0x81, 0x82, 0x83, 0xFF)


class Violation(AssertionError):
    """A machine broke a fuzz property."""


def require(condition: object, message: str) -> None:
    if not condition:
        raise Violation(message)


def client_key(n: int) -> PrivateKey:
    return PrivateKey(sha256(b"fuzz client %d" % n))


class Draw(Protocol):
    def __call__(self, strategy: st.SearchStrategy[X], label: Any = None) -> X: ...


# -- the properties ----------------------------------------------------------------------


@dataclass
class Tally:
    """What the runs exercised (printed by the deep profile)."""

    examples: int = 0
    frames: int = 0
    mutated: int = 0
    undecodable: int = 0
    refused: int = 0  # ERRORs the machines sent
    input_errors: int = 0  # inputs the machine refused (PaychanError), as an adapter sees
    refusals: Counter[str] = field(default_factory=Counter)  # which, and why

    def __str__(self) -> str:
        counts = ", ".join(f"{k} {v:,}" for k, v in vars(self).items() if isinstance(v, int))
        why = "".join(f"\n  {n:6,} {what}" for what, n in self.refusals.most_common(8))
        return f"{counts}; inputs refused:{why}"


TALLY = Tally()


@dataclass
class Watch:
    """The properties, across every machine of one run (a resume is a new machine)."""

    paid: dict[str, int] = field(default_factory=dict)  # server: highest share stored
    stored: set[tuple[int, bytes]] = field(default_factory=set)  # (change, signature)
    settled: set[str] = field(default_factory=set)  # channels whose settlement was decided
    allowed: dict[str, int] = field(default_factory=dict)  # client: what it may have paid
    ended: set[int] = field(default_factory=set)  # machines that said Disconnect
    errored: set[int] = field(default_factory=set)  # machines that sent ERROR
    last_close: dict[int, T] = field(default_factory=dict)  # client: the last CLOSE received
    reported: set[tuple[int, int]] = field(default_factory=set)  # (machine, payment number)
    # reported before the machine sent ERROR or hung up: its ack may still go out (the
    # payment is stored; the transport sends the acks of a batch before the ERROR after it)
    owed: bool = False  # the call running answers such a payment

    def call(self, machine: ProtocolMachine, name: str, run: Callable[[], list[Effect]]
             ) -> list[Effect]:
        """Run one call into `machine`: a message may never raise; an input may raise only
        the project's errors (the adapter gets the error, the machine's effects are none)."""
        try:
            effects = run()
        except PaychanError as exc:
            require(name != "receive", f"receive raised:\n{traceback.format_exc()}")
            TALLY.input_errors += 1
            TALLY.refusals[f"{name}: {str(exc)[:60]}"] += 1
            return []
        except Violation:
            raise
        except Exception:
            raise Violation(f"{name} raised outside the error hierarchy:\n"
                            f"{traceback.format_exc()}") from None
        me = id(machine)
        if me in self.ended and not self.owed:
            require(not effects, f"{name} after Disconnect produced {effects}")
        for effect in effects:
            if isinstance(machine, ServerChannel):
                self.server_effect(machine, effect)
            else:
                assert isinstance(machine, ClientChannel)
                self.client_effect(machine, effect)
            if isinstance(effect, Disconnect):
                self.ended.add(me)
            if isinstance(effect, Send) and effect.message.type == T.ERROR:
                TALLY.refused += 1
                self.errored.add(me)
        return effects

    def server_effect(self, machine: ServerChannel, effect: Effect) -> None:
        me = id(machine)
        if isinstance(effect, StoreChannel | StorePayment):
            record = effect.record
            if record.status is ChannelStatus.CLOSING:
                settlement = Transaction.parse(record.settlement_tx or b"")
                require(spend_problem(record.contract, settlement, ANY_TIME) is None,
                        "the server stored a settlement that cannot spend the contract")
                self.settled.add(record.contract_txid)
                return
            txid = record.contract_txid
            require(txid not in self.settled, "a payment stored after the settlement")
            require(me not in self.errored, "a payment stored after ERROR")
            require(payment_verifies(record) and settlement_valid(record),
                    f"the server stored a payment that does not verify: {record}")
            grows = record.paid > self.paid.get(txid, -1) if isinstance(effect, StorePayment) \
                else record.paid >= self.paid.get(txid, 0)
            require(grows, f"the stored amount fell: {record.paid} after {self.paid.get(txid)}")
            self.paid[txid] = record.paid
            self.stored.add((record.change, record.signature))
        elif isinstance(effect, PaymentReceived):
            record = effect.record
            if me not in self.errored and me not in self.ended:
                self.reported.add((me, record.payments))
            require((record.change, record.signature) in self.stored,
                    "PaymentReceived before its payment was stored")
            require(record.contract_txid not in self.settled, "a payment after the settlement")
            require(me not in self.errored, "a payment received after ERROR")
        elif isinstance(effect, Send) and effect.message.type == T.PAYMENT_ACK:
            held = machine.record
            require(held is not None and held.contract_txid not in self.settled,
                    "PAYMENT_ACK after the settlement was decided")
            require(me not in self.errored or self.owed, "PAYMENT_ACK after ERROR")

    def client_effect(self, machine: ClientChannel, effect: Effect) -> None:
        me = id(machine)
        if isinstance(effect, StoreChannel | StorePayment):
            record = effect.record
            txid = record.contract_txid
            if record.status is ChannelStatus.CLOSING:
                require(pays_change(record, Transaction.parse(record.settlement_tx or b"")),
                        "the client accepted a settlement paying it less than its change")
                return
            require(me not in self.errored, "the client stored a payment after ERROR")
            require(payment_verifies(record), "the client signed a payment that does not verify")
            if txid not in self.allowed:  # the opening's initial payment
                require(record.paid < CLIENT_POLICY.max_min_payment + DUST,
                        f"initial payment {record.paid} above the client's limit")
                self.allowed[txid] = record.paid
            allowed = self.allowed[txid]
            require(record.paid <= allowed or (record.change == 0 and VALUE - allowed < DUST),
                    f"the client signed {record.paid} paid, its application allowed {allowed}")
            self.stored.add((record.change, record.signature))
        elif isinstance(effect, Send):
            message = effect.message
            if message.type == T.UPDATE_PAYMENT:
                body = message.update_payment
                require((body.client_change_value, body.signature) in self.stored,
                        "the client sent a payment it had not stored")
                require(me not in self.errored, "the client paid after ERROR")
            if message.type == T.CLOSE and message.musig_partial_signature:
                held, proposal = machine.record, self.last_close.get(me)
                require(held is not None and proposal is not None
                        and pays_change(held, Transaction.parse(proposal.musig_settlement)),
                        "the client co-signed a settlement paying it less than its change")

    def client_paying(self, machine: ClientChannel, amount: int) -> None:
        """The application asks `machine` to pay `amount` more."""
        record = machine.record
        if record is not None and record.contract_txid in self.allowed:
            self.allowed[record.contract_txid] += amount


def pays_change(record: ChannelRecord, tx: Transaction) -> bool:
    """`tx` spends the contract and pays the client at least its stored change."""
    contract = record.contract
    if not tx.inputs or tx.inputs[0].prevout != contract.outpoint:
        return False
    return not record.change or bool(
        tx.outputs and tx.outputs[0].script_pubkey == contract.change_script
        and tx.outputs[0].value >= record.change)


class Checked(ProtocolMachine):
    """A machine whose every call is observed by its `watch` (set once built)."""

    watch: Watch

    def receive(self, message: T) -> list[Effect]:
        if isinstance(self, ClientChannel) and message.type == T.CLOSE:
            self.watch.last_close[id(self)] = message
        return self.watch.call(self, "receive", lambda: super(Checked, self).receive(message))

    def _input(self, event: Input, handler: Callable[..., list[Effect]], *args: Any
               ) -> list[Effect]:
        if event is Input.PAY and isinstance(self, ClientChannel) and self.can_pay:
            self.watch.client_paying(self, args[0])
        watch = self.watch
        watch.owed = event is Input.PAYMENT_ANSWERED and (
            id(self), args[0].record.payments) in watch.reported
        try:
            return watch.call(self, event.value,
                              lambda: super(Checked, self)._input(event, handler, *args))
        finally:
            watch.owed = False


class FuzzServer(Checked, ServerChannel):
    pass


class FuzzClient(Checked, ClientChannel):
    pass


# -- the hostile link --------------------------------------------------------------------


@dataclass(frozen=True)
class Mutation:
    """What happens to the `index`-th frame sent `direction`."""

    direction: str
    index: int
    op: str
    arg: int = 0


OPS = ("flip", "truncate", "extend", "field", "field", "field", "drop", "duplicate", "hold",
       "replay", "foreign", "decide")


def mutations(directions: tuple[str, ...], frames: int, most: int = 3
              ) -> st.SearchStrategy[list[Mutation]]:
    one = st.builds(Mutation, st.sampled_from(directions), st.integers(0, frames - 1),
                    st.sampled_from(OPS), st.integers(0, 2**20))
    return st.lists(one, min_size=1, max_size=most)


@dataclass
class Link:
    """The connection between the machines, doing to frames what `plan` says."""

    plan: list[Mutation]
    draw: Draw
    foreign: list[bytes]  # frames of other channels' honest sessions
    sent: dict[str, list[bytes]] = field(default_factory=lambda: {TO_SERVER: [], TO_CLIENT: []})
    held: dict[str, list[bytes]] = field(default_factory=lambda: {TO_SERVER: [], TO_CLIENT: []})
    decide: bool = False  # at the next quiet moment, another instance settles the channel

    def transmit(self, direction: str, payload: bytes) -> list[bytes]:
        history = self.sent[direction]
        index = len(history)
        history.append(payload)
        out = [payload]
        for mutation in (m for m in self.plan if (m.direction, m.index) == (direction, index)):
            TALLY.mutated += 1
            out = self.apply(mutation, out, history)
        out, self.held[direction] = out + self.held[direction], []
        if any(m.op == "hold" for m in self.plan if (m.direction, m.index) == (direction,
                                                                                  index)):
            out, self.held[direction] = [], out
        return out

    def apply(self, mutation: Mutation, out: list[bytes], history: list[bytes]) -> list[bytes]:
        if not out:
            return out
        first, rest, arg = out[0], out[1:], mutation.arg
        match mutation.op:
            case "flip":
                flipped = bytearray(first)
                if flipped:  # arg: the byte's position, then the bits flipped
                    flipped[(arg >> 8) % len(flipped)] ^= arg & 0xFF or 1
                return [bytes(flipped), *rest]
            case "truncate":
                return [first[:arg % max(1, len(first))], *rest]
            case "extend":
                return [first + self.draw(st.binary(min_size=1, max_size=40)), *rest]
            case "field":
                return [mutate_fields(first, self.draw), *rest]
            case "drop":
                return rest
            case "duplicate":
                return [first, *out]
            case "replay":
                return [*out, history[arg % len(history)]]
            case "foreign":
                return [*out, self.foreign[arg % len(self.foreign)]] if self.foreign else out
            case "decide":
                self.decide = True
        return out

    def flush(self) -> list[tuple[str, bytes]]:
        """Frames still held (the frame meant to overtake them never came)."""
        out = [(d, p) for d, frames in self.held.items() for p in frames]
        self.held = {TO_SERVER: [], TO_CLIENT: []}
        return out


# -- field-level mutations of a decoded message --------------------------------------------

INT_RANGES = {"uint64": (0, 2**64 - 1), "int32": (-(2**31), 2**31 - 1), "uint32": (0, 2**32 - 1)}


def mutate_fields(payload: bytes, draw: Draw) -> bytes:
    """Change one field (set or not) of the decoded message, anywhere in its tree."""
    try:
        message: Message = decode_message(payload)
    except RemoteProtocolError:
        return payload
    spots: list[tuple[Message, Any]] = [(message, f) for f in message.DESCRIPTOR.fields]
    for f in message.DESCRIPTOR.fields:
        if f.message_type is not None and message.HasField(f.name):
            body = getattr(message, f.name)
            spots += [(body, g) for g in body.DESCRIPTOR.fields]
            for g in body.DESCRIPTOR.fields:
                if g.message_type is not None and body.HasField(g.name):
                    inner = getattr(body, g.name)
                    spots += [(inner, h) for h in inner.DESCRIPTOR.fields]
    owner, spot = draw(st.sampled_from(spots))
    if draw(st.integers(0, 7)) == 0 or spot.message_type is not None:
        owner.ClearField(spot.name)
    elif spot.enum_type is not None:
        setattr(owner, spot.name, draw(st.sampled_from([v.number for v in spot.enum_type.values])))
    elif spot.type == spot.TYPE_BYTES:
        setattr(owner, spot.name, mutate_bytes(spot.name, getattr(owner, spot.name), draw))
    elif spot.type == spot.TYPE_STRING:
        setattr(owner, spot.name, draw(st.text(max_size=20)))
    else:
        low, high = INT_RANGES[{spot.TYPE_UINT64: "uint64", spot.TYPE_INT32: "int32"}.get(
            spot.type, "uint32")]
        old = getattr(owner, spot.name)
        new = draw(st.sampled_from([low, high, 0, 1, 2, 3, 4, 5, DUST - 1, DUST, VALUE, VALUE + 1])
                   | st.integers(-2 * DUST, 2 * DUST).map(lambda d: old + d)
                   | st.integers(low, high))
        setattr(owner, spot.name, min(max(new, low), high))
    return message.SerializePartialToString()


def mutate_bytes(name: str, old: bytes, draw: Draw) -> bytes:
    choices: list[st.SearchStrategy[bytes]] = [
        st.just(b""), st.binary(max_size=80),
        st.integers(0, max(0, len(old) - 1)).map(lambda n: old[:n]),
        st.tuples(st.integers(0, 8 * max(1, len(old)) - 1)).map(lambda n: flip_bit(old, n[0])),
        st.binary(min_size=1, max_size=4).map(lambda extra: old + extra),
    ]
    if name in ("signature", "resume_proof") and old:
        choices.append(st.sampled_from(HASHTYPES).map(lambda h: old[:-1] + bytes([h])))
        choices.append(st.sampled_from(HASHTYPES).map(lambda h: old + bytes([h])))
    if name in ("multisig_key", "client_key"):
        keys = [SERVER_KEY.pub.data, client_key(0).pub.data, client_key(1).pub.data,
                b"\x04" + bytes(64), b"\x02" + bytes(32)]
        choices.append(st.sampled_from(keys))
    if name in ("tx", "musig_settlement") and old:
        choices.append(st.integers(0, 2**16).map(lambda n: mutate_tx(old, n, draw)))
    if name == "musig_nonce":
        choices.append(st.binary(min_size=66, max_size=66))
        choices.append(st.just(b"\x02" + bytes(32) + b"\x03" + bytes(32)))
    return draw(st.one_of(choices))


def flip_bit(data: bytes, bit: int) -> bytes:
    if not data:
        return b"\x01"
    flipped = bytearray(data)
    flipped[bit // 8 % len(data)] ^= 1 << bit % 8
    return bytes(flipped)


def mutate_tx(raw: bytes, choice: int, draw: Draw) -> bytes:
    """A transaction changed where it matters: values, scripts, outputs, lock time,
    sequence, the outpoint spent."""
    try:
        tx = Transaction.parse(raw)
    except PaychanError:
        return raw
    delta = draw(st.integers(-VALUE, VALUE))
    outputs, inputs = list(tx.outputs), list(tx.inputs)
    match choice % 7:
        case 0 if outputs:
            outputs[0] = replace(outputs[0], value=max(0, outputs[0].value + delta))
        case 1 if outputs:
            outputs[-1] = replace(outputs[-1], value=max(0, outputs[-1].value + delta))
        case 2 if outputs:
            outputs[0] = replace(outputs[0], script_pubkey=PAYOUT)
        case 3:
            outputs = outputs[1:] if outputs else [TxOut(VALUE, PAYOUT)]
        case 4:
            outputs.append(TxOut(abs(delta), PAYOUT))
        case 5:
            tx = replace(tx, locktime=abs(delta))
        case _ if inputs:
            first = inputs[0]
            inputs[0] = replace(first, sequence=abs(delta) % 2**32) if choice % 2 else replace(
                first, prevout=OutPoint(first.prevout.txid, first.prevout.index + 1))
    return replace(tx, inputs=tuple(inputs), outputs=tuple(outputs)).serialize()


# -- the run -----------------------------------------------------------------------------


def funding(effect: FundContract, tag: int) -> Transaction:
    """The wallet's contract tx, the same every run (reproducible examples)."""
    prevout = OutPoint(sha256(b"fuzz funding %d" % tag), 1)
    return Transaction(2, (TxIn(prevout, b"", 0xFFFFFFFD, (bytes(71), bytes(33))),),
                       (TxOut(effect.value, effect.script_pubkey), TxOut(50_000, PAYOUT)), 0)


def wallet_funded(draft: Transaction) -> Transaction:
    """FundSettlement's answer: the draft with a wallet input and change added."""
    txin = TxIn(OutPoint(sha256(b"fuzz wallet"), 0), b"", 0xFFFFFFFD, (bytes(71), bytes(33)))
    return replace(draft, inputs=(*draft.inputs, txin),
                   outputs=(*draft.outputs, TxOut(20_000, PAYOUT)))


@dataclass
class FuzzPump(Pump):
    """Pump over a `Link`; frames the receiver cannot decode end its connection."""

    link: Link | None = None
    tag: int = 0
    watch: Watch = field(default_factory=Watch)

    def run(self, client_effects: list[Effect]) -> None:
        super().run(client_effects)
        while self.link is not None and (held := self.link.flush()):
            for direction, payload in held:
                self.drain(self._deliver(direction, [payload]))
        if self.link is not None and self.link.decide:
            self.drain(self._decide())

    def _carry_out(self, side: str, effect: Effect) -> list[tuple[str, Effect]]:
        if isinstance(effect, Send):
            direction = TO_SERVER if side == "client" else TO_CLIENT
            payload = encode_message(effect.message)  # a message the codec refuses raises
            TALLY.frames += 1
            frames = self.link.transmit(direction, payload) if self.link else [payload]
            return self._deliver(direction, frames)
        if isinstance(effect, FundContract):
            return [("client", e) for e in self.client.contract_funded(
                funding(effect, self.tag))]
        if isinstance(effect, FundSettlement):
            return [("server", e) for e in self.server.settle_funded(wallet_funded(effect.draft))]
        return super()._carry_out(side, effect)

    def _deliver(self, direction: str, frames: list[bytes]) -> list[tuple[str, Effect]]:
        """Frames arriving together, as the transports hand them on: decoded until one does
        not decode (then ERROR and hang-up, after the ones before it); the server takes
        them as pipelined payments (`receive_pipelined`), the effects in order."""
        receiver, sender = (("server", "client") if direction == TO_SERVER
                            else ("client", "server"))
        machine, peer = ((self.server, self.client) if receiver == "server"
                         else (self.client, self.server))
        follow: list[tuple[str, Effect]] = []
        pending: list[T] = []
        try:
            for payload in frames:
                pending.append(decode_message(payload))
        except RemoteProtocolError as exc:  # the receiver's adapter: ERROR, hang up
            TALLY.undecodable += 1
            follow = [*[(receiver, e) for e in machine.connection_lost()],
                      *[(sender, e) for e in peer.receive(messages.error(exc.code, str(exc)))]]
        taken: list[tuple[str, Effect]] = []
        while pending:
            if receiver == "server":
                effects, count = self.server.receive_pipelined(pending)
            else:
                effects, count = self.client.receive(pending[0]), 1
            taken, pending = taken + [(receiver, e) for e in effects], pending[count:]
        return taken + follow

    def _decide(self) -> list[tuple[str, Effect]]:
        """At a quiet moment, another instance settles the server's channel from the store
        (the latest stored payment): the store says CLOSING, and so does this machine's."""
        assert self.link is not None
        self.link.decide = False
        record = next(iter(self.server_store.values()), None)
        if record is None or record.status is not ChannelStatus.OPEN:
            return []
        contract = record.contract
        draft = contract.settlement_draft(record.change, record.paid - 1_000, PAYOUT)
        settlement = contract.sign_settlement(draft, record.signature, record.key)
        closing = replace(record, status=ChannelStatus.CLOSING,
                          settlement_tx=settlement.serialize())
        self.server_store[record.contract_txid] = closing
        self.watch.settled.add(record.contract_txid)
        server = self.server
        if server.state is server.closed or (server.state, Input.SETTLEMENT_DECIDED) not in \
                server.TABLE:  # (closed: the batch-dropped ERROR case, not a connection's)
            return []
        return [("server", e) for e in self.server.settlement_decided(closing)]


# -- the honest script: the seed every plan mutates ----------------------------------------

AMOUNTS = (20_000, 7_000, 3_000, 5_000)  # the first two one by one, then two pipelined...


def machines(version: int, watch: Watch, tag: int) -> tuple[FuzzClient, FuzzServer]:
    client = FuzzClient(CLIENT_POLICY, client_key(tag), NOW, version)
    server = FuzzServer(ServerPolicy(), SERVER_KEY, NOW)
    client.watch = server.watch = watch
    return client, server


def pay(pump: FuzzPump, amounts: tuple[int, ...]) -> None:
    """The application pays each amount the channel can still take, together (pipelined
    when the window allows)."""
    effects: list[Effect] = []
    for amount in amounts:
        record = pump.client.record
        if pump.client.can_pay and record is not None and record.change:
            effects += pump.client.pay(min(amount, record.change))
    pump.run(effects)


def session(version: int, plan: list[Mutation], draw: Draw, foreign: list[bytes],
            tag: int = 0) -> FuzzPump:
    """Open, pay, lose the connection, resume, pay, close (v4: by key path) — over a link
    doing `plan` to the frames."""
    watch = Watch()
    client, server = machines(version, watch, tag)
    pump = FuzzPump(client, server, link=Link(plan, draw, foreign), tag=tag, watch=watch)
    pump.run(client.start())
    pay(pump, AMOUNTS[:1])
    pay(pump, AMOUNTS[1:2])
    pay(pump, AMOUNTS[2:4])
    pump.drain([("client", e) for e in client.connection_lost()]
               + [("server", e) for e in server.connection_lost()])
    stored = list(pump.client_store.values())
    if not stored or stored[0].status is not ChannelStatus.OPEN:
        return pump
    resumed = FuzzClient.resuming(stored[0], CLIENT_POLICY, NOW)
    assert isinstance(resumed, FuzzClient)
    server = FuzzServer(ServerPolicy(), SERVER_KEY, NOW)
    resumed.watch = server.watch = watch
    pump.client, pump.server = resumed, server
    pump.run(resumed.start())
    pay(pump, AMOUNTS[:1])
    if (resumed.state, Input.CLOSE) in resumed.TABLE:
        pump.run(resumed.close())
    return pump


def honest_frames(version: int, tag: int) -> dict[str, list[bytes]]:
    """The encoded frames each way of an honest session (the seed corpus, built by Pump)."""
    pump = session(version, [], no_draw, [], tag)
    assert pump.link is not None
    return pump.link.sent


def no_draw(strategy: st.SearchStrategy[X], label: Any = None) -> X:
    raise AssertionError("an honest session draws nothing")
