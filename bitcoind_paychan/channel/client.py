"""The client's side of one connection, as a sans-IO state machine.

The application calls `start`, `pay` and `close`; the adapter feeds messages and the funded
contract in and carries out the effects. Every payment is stored before it is sent.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, replace

from bitcoind_paychan.bitcoin.keys import PrivateKey, PublicKey
from bitcoind_paychan.bitcoin.musig2 import SecretNonce
from bitcoind_paychan.bitcoin.tx import Transaction
from bitcoind_paychan.channel import messages, reanchor_autopilot
from bitcoind_paychan.channel.contract import (
    Contract,
    bad_tx,
    contract_from_tx,
    output_script,
    round_change,
)
from bitcoind_paychan.channel.effects import (
    ChannelClosed,
    ChannelOpened,
    Disconnect,
    Effect,
    FundContract,
    PaymentAcknowledged,
    ResumeRefused,
    Send,
    StoreChannel,
    StorePayment,
    VersionRefused,
)
from bitcoind_paychan.channel.kinds.registry import DEFAULT_VERSION, kind_of
from bitcoind_paychan.channel.machine import (
    VALUE_CODE_NOTE,
    FastEnum,
    Handler,
    Input,
    ProtocolMachine,
    resume_digest,
    table,
)
from bitcoind_paychan.channel.messages import DEFAULT_TIME_WINDOW
from bitcoind_paychan.channel.reanchor_client import EXPIRY_SLACK, ClientReanchoring
from bitcoind_paychan.channel.records import ChannelRecord, ChannelStatus, Role
from bitcoind_paychan.errors import (
    DecodeError,
    ErrorCode,
    LocalProtocolError,
    MusigError,
    PolicyError,
    RemoteProtocolError,
)
from bitcoind_paychan.wire import error_code, pb

T = pb.TwoWayChannelMessage


@dataclass(frozen=True)
class ClientPolicy:
    """What the client wants: the channel's value and what it accepts from a server."""

    value: int = 1_000_000
    time_window: int = DEFAULT_TIME_WINDOW
    max_min_payment: int = 10_000
    payment_window: int = 16  # payments in flight at most, if the server takes a window
    max_fee_rate: int = 200_000  # sat/kvB: the most a re-anchor may pay (the service sets
    # its FeePolicy's cap)
    reanchoring: bool = False  # ask for re-anchoring (issue 23) where the kind can
    # The autopilot's re-anchors (reanchor_autopilot.py; 0: off): top up below `refill_below`
    # sat up to `refill_to` (0: `value`), never funding more than `max_deposit` in all; renew
    # within `renew_before` s of the expiry.
    refill_below: int = 0
    refill_to: int = 0
    max_deposit: int = 0
    renew_before: int = 0

    def __post_init__(self) -> None:
        for name in ("value", "time_window", "max_min_payment", "payment_window",
                     "max_fee_rate"):
            if getattr(self, name) < 1:
                raise PolicyError(name, f"found {getattr(self, name)}, expected an integer ≥ 1")
        reanchor_autopilot.check_client(self)


class ClientState(FastEnum):
    IDLE = "not started"
    WAITING_FOR_VERSION = "waiting for SERVER_VERSION"
    WAITING_FOR_INITIATE = "waiting for INITIATE"
    FUNDING = "funding the contract"
    WAITING_FOR_REFUND = "waiting for RETURN_REFUND"
    WAITING_FOR_OPEN = "waiting for CHANNEL_OPEN"
    OPEN = "open"
    WAITING_FOR_ACK = "waiting for PAYMENT_ACK"
    CLOSE_AFTER_ACK = "waiting for PAYMENT_ACK, then closing"
    CLOSING = "waiting for the settlement"
    CLOSED = "closed"


C = ClientState
TABLE = table({
    (C.IDLE, Input.START): {C.WAITING_FOR_VERSION},
    (C.WAITING_FOR_VERSION, T.SERVER_VERSION): {C.WAITING_FOR_INITIATE, C.WAITING_FOR_OPEN},
    (C.WAITING_FOR_INITIATE, T.INITIATE): {C.FUNDING},
    (C.FUNDING, Input.CONTRACT_FUNDED): {C.WAITING_FOR_REFUND, C.WAITING_FOR_OPEN},
    (C.WAITING_FOR_REFUND, T.RETURN_REFUND): {C.WAITING_FOR_OPEN},
    (C.WAITING_FOR_OPEN, T.CHANNEL_OPEN): {C.OPEN, C.WAITING_FOR_ACK},  # resumed: re-send
    (C.WAITING_FOR_OPEN, T.INITIATE): {C.CLOSED},  # our resume refused
    (C.WAITING_FOR_OPEN, T.CLOSE): {C.CLOSED},  # resumed near expiry: the server settles
    (C.OPEN, Input.PAY): {C.WAITING_FOR_ACK},
    (C.WAITING_FOR_ACK, Input.PAY): {C.WAITING_FOR_ACK},  # pipelined, within the window
    (C.OPEN, Input.CLOSE): {C.CLOSING},
    (C.OPEN, T.CLOSE): {C.CLOSED},
    (C.WAITING_FOR_ACK, T.PAYMENT_ACK): {C.OPEN, C.WAITING_FOR_ACK,  # more in flight
                                         C.CLOSING},  # CLOSING: channel used up
    (C.WAITING_FOR_ACK, Input.CLOSE): {C.CLOSE_AFTER_ACK},
    (C.WAITING_FOR_ACK, T.CLOSE): {C.CLOSED},
    (C.CLOSE_AFTER_ACK, T.PAYMENT_ACK): {C.CLOSING,  # the last ack: then CLOSE goes out
                                         C.CLOSE_AFTER_ACK},
    (C.CLOSE_AFTER_ACK, Input.CLOSE): {C.CLOSE_AFTER_ACK},
    (C.CLOSE_AFTER_ACK, T.CLOSE): {C.CLOSED},
    (C.CLOSING, T.PAYMENT_ACK): {C.CLOSING},  # an ack already on the wire is honoured
    (C.CLOSING, Input.CLOSE): {C.CLOSING},
    (C.CLOSING, T.CLOSE): {C.CLOSED,  # the settlement
                           C.CLOSING},  # the key-path settlement to sign (v4): ours goes back
    (C.CLOSING, Input.SETTLEMENT_SEEN): {C.CLOSED},
    (C.CLOSE_AFTER_ACK, Input.SETTLEMENT_SEEN): {C.CLOSED},
    (C.CLOSED, Input.SETTLEMENT_SEEN): {C.CLOSED},
    (C.CLOSED, Input.CLOSE): {C.CLOSED},
    (C.WAITING_FOR_OPEN, Input.ABANDON): {C.CLOSED},  # the server never said CHANNEL_OPEN
    (C.CLOSED, Input.ABANDON): {C.CLOSED},
    # Re-anchoring (docs/design/reanchoring.md), on a channel whose server offered it; the
    # channel stays open throughout (payments go on). The application asks (PROPOSE); the
    # server's TERMS (asked or not) are checked, funded (FundReanchor, with a top-up), then R
    # and the carried payment are signed, stored and sent (SIGNED); ACK stores R complete,
    # REFUSED ends it. An unasked payout goes to an autopilot first (ReanchorOffered: it
    # proposes its own, or `accept_offer`); `reanchor_unfunded` and `accept_offer` are
    # inputs of the REANCHOR_FUNDED kind. Closing: quotes are ignored, answers recorded.
    (C.OPEN, Input.REANCHOR): {C.OPEN},
    (C.WAITING_FOR_ACK, Input.REANCHOR): {C.WAITING_FOR_ACK},
    **{(state, event): {state}
       for state in (C.OPEN, C.WAITING_FOR_ACK, C.CLOSE_AFTER_ACK, C.CLOSING)
       for event in (T.REANCHOR_TERMS, T.REANCHOR_ACK, T.REANCHOR_REFUSED, T.REANCHOR_LOCKED,
                     Input.REANCHOR_FUNDED, Input.REANCHOR_CONFIRMED)},
    (C.CLOSED, Input.REANCHOR_FUNDED): {C.CLOSED},  # the coins are released
    (C.CLOSED, Input.REANCHOR_CONFIRMED): {C.CLOSED},
}, ClientState, C.CLOSED)


class ClientChannel(ClientReanchoring, ProtocolMachine):
    """One connection to a server on the client side.

    `ClientChannel(policy, key, now, version)` opens a new channel; `ClientChannel.resuming(
    record, policy, now)` continues a stored one. Inputs besides `receive(message)`: `start()`,
    `contract_funded(tx)` (answers FundContract), `pay(amount, info)`, `close()`,
    `settlement_seen(tx)` (a spender of the contract found on the node), `abandon()` (the
    server never opened the new channel and its contract's coins are unspent) and
    `connection_lost()`; `TABLE` lists which are legal in which state. `close()` while a
    payment is in flight sends CLOSE once its ack arrives; closing again is a no-op."""

    TABLE = TABLE
    state: ClientState
    closed = ClientState.CLOSED
    peer_name = "server"

    def __init__(self, policy: ClientPolicy, key: PrivateKey, now: int,
                 version: int = DEFAULT_VERSION, peer: str = "") -> None:
        self.policy = policy
        self.key = key
        self.now = now
        self.version = version
        self.kind = kind_of(version)  # LocalProtocolError for a version we do not know
        self.peer = peer
        self.record: ChannelRecord | None = None
        self.state = ClientState.IDLE
        self.min_payment = 0
        self.expiry = 0
        self.server_pub = b""
        self.opened = False  # CHANNEL_OPEN seen on this connection
        self._resuming = False
        self._challenge = b""
        self._contract: Contract | None = None
        self._contract_tx = b""
        self._refund: Transaction | None = None
        self._in_flight: deque[tuple[int, bytes]] = deque()  # (amount, info) awaiting acks
        self._secnonce: SecretNonce | None = None  # our MuSig2 nonce for the key-path close:
        self._nonce = b""  # in memory only (a crash starts a new session), signs once
        self.window = 1  # payments in flight at most: the server's payment_window, capped
        self.reanchoring = False
        self._wish = None
        self._funding = None
        self._offered = None
        self._funding_refused = False
        self._crossed = False
        self.handlers: dict[int, Handler] = {
            T.SERVER_VERSION: self._on_server_version,
            T.INITIATE: self._on_initiate,
            T.RETURN_REFUND: self._on_return_refund,
            T.CHANNEL_OPEN: self._on_channel_open,
            T.PAYMENT_ACK: self._on_payment_ack,
            T.CLOSE: self._on_close,
            T.REANCHOR_TERMS: self._on_reanchor_terms,
            T.REANCHOR_ACK: self._on_reanchor_ack,
            T.REANCHOR_REFUSED: self._on_reanchor_refused,
            T.REANCHOR_LOCKED: self._on_reanchor_locked,
        }

    @classmethod
    def resuming(cls, record: ChannelRecord, policy: ClientPolicy, now: int) -> ClientChannel:
        """A machine that continues the stored channel `record` with its server."""
        machine = cls(policy, record.key, now, record.version, record.peer)
        machine.record, machine._resuming = record, True
        return machine

    @property
    def can_pay(self) -> bool:
        """A payment may go out now: the channel is open and the window has room."""
        return (self.state is ClientState.OPEN or (self.state is ClientState.WAITING_FOR_ACK
                and len(self._in_flight) < self.window))

    @property
    def _may_reanchor(self) -> bool:
        return self.policy.reanchoring and self.kind.capabilities.reanchoring

    def _paying(self) -> bool:
        return self.state in (ClientState.OPEN, ClientState.WAITING_FOR_ACK)

    @property
    def resumed(self) -> bool:
        """True when this connection continues a stored channel rather than opening one."""
        return self._resuming

    # -- application calls -----------------------------------------------------------------

    def start(self) -> list[Effect]:
        """Say hello: CLIENT_VERSION (naming the stored channel when resuming)."""
        return self._input(Input.START, self._on_start)

    def _on_start(self) -> list[Effect]:
        self.state = ClientState.WAITING_FOR_VERSION
        previous = self.record.channel_id if self.record else None
        return [Send(messages.client_version(self.version, self.policy.time_window, previous,
                                             self._may_reanchor))]

    def contract_funded(self, contract_tx: Transaction) -> list[Effect]:
        """The answer to FundContract: the wallet's signed, unbroadcast contract."""
        return self._input(Input.CONTRACT_FUNDED, self._on_contract_funded, contract_tx)

    def _on_contract_funded(self, contract_tx: Transaction) -> list[Effect]:
        contract = contract_from_tx(self.version, contract_tx, self.key.pub.data,
                                    self.server_pub, self.expiry)
        if contract.value != self.policy.value:
            raise LocalProtocolError(f"the wallet funded {contract.value}, not {self.policy.value}")
        self._contract, self._contract_tx = contract, contract_tx.serialize()
        if self.kind.capabilities.presigned_refund:
            self._refund = contract.refund_tx(self.kind.presigned_refund_fee)
            self.state = ClientState.WAITING_FOR_REFUND
            return [Send(messages.provide_refund(self.key.pub.data, self._refund.serialize()))]
        return self._provide_contract(None)

    def pay(self, amount: int, info: bytes = b"") -> list[Effect]:
        """Pay `amount` more: store the new signature, then send it. Any positive amount
        (the server's minimum payment bounds the initial payment only); change below dust
        goes to the server too, so the channel may be exhausted by a slightly larger one."""
        return self._input(Input.PAY, self._on_pay, amount, info)

    def _on_pay(self, amount: int, info: bytes) -> list[Effect]:
        record = self.record
        assert record is not None
        if amount <= 0:
            raise LocalProtocolError(f"payment amount must be positive, not {amount}")
        if len(self._in_flight) >= self.window:
            raise LocalProtocolError(f"{len(self._in_flight)} payments already await their "
                                     f"acks, the window ({self.window}); wait for an ack")
        if amount > record.change:
            raise LocalProtocolError(f"the channel has {record.change} sat left; "
                                     f"cannot pay {amount}")
        paired = self._paired(record, amount)
        return self._send_payment(record, round_change(record.change - amount) if paired is None
                                  else paired, info)

    def close(self) -> list[Effect]:
        """Ask the server to settle: at once, or once the payment in flight is acknowledged.
        Closing a channel that is closing or closed does nothing."""
        return self._input(Input.CLOSE, self._on_close_input)

    def _on_close_input(self) -> list[Effect]:
        if self.state is ClientState.OPEN:
            self.state = ClientState.CLOSING
            return [Send(self._close_message())]
        if self.state is ClientState.WAITING_FOR_ACK:
            self.state = ClientState.CLOSE_AFTER_ACK
        return []

    def settlement_seen(self, settlement: Transaction) -> list[Effect]:
        """A transaction spending our contract, found on the node while we wait for CLOSE
        (or after the server hung up): checked like a settlement the server sends."""
        return self._input(Input.SETTLEMENT_SEEN, self._on_settlement_seen, settlement)

    def _on_settlement_seen(self, settlement: Transaction) -> list[Effect]:
        record = self.record
        if record is None:
            raise LocalProtocolError("no channel to settle")
        check_settlement(record, settlement)
        return self._closed_by(settlement)

    def abandon(self) -> list[Effect]:
        """Give up the new channel the server never opened, once the adapter found the
        contract's coins unspent (not on chain nor in our node's mempool): its record is kept
        as FAILED (the watcher reopens it if the contract shows up on chain after all)."""
        return self._input(Input.ABANDON, self._on_abandon)

    def _on_abandon(self) -> list[Effect]:
        record = self.record
        if record is None or self.opened or self._resuming:
            raise LocalProtocolError("only a new channel the server never opened is abandoned")
        failed = replace(record, status=ChannelStatus.FAILED)
        self.record, self.state = failed, ClientState.CLOSED
        return [StoreChannel(failed)]

    def _on_connection_lost(self) -> list[Effect]:
        """A hang-up right after CLIENT_VERSION of a new channel is how a bitcoinj server says
        it does not speak our major (its ERROR frame is lost): report it for fallback."""
        was = self.state
        self.state = ClientState.CLOSED
        if was is ClientState.WAITING_FOR_VERSION and not self._resuming:
            return [VersionRefused(self.version, "the server hung up without answering our "
                                   f"CLIENT_VERSION {self.version}", lost=True)]
        return []

    # -- messages --------------------------------------------------------------------------

    def on_error(self, message: T) -> list[Effect]:
        was = self.state
        effects = super().on_error(message)
        if (error_code(message.error) is ErrorCode.NO_ACCEPTABLE_VERSION
                and was is ClientState.WAITING_FOR_VERSION):
            effects.insert(1, VersionRefused(self.version, message.error.explanation))
        return effects

    def _on_server_version(self, message: T) -> list[Effect]:
        if message.server_version.major != self.version:
            raise RemoteProtocolError(
                f"server answered major {message.server_version.major} to our {self.version}",
                ErrorCode.NO_ACCEPTABLE_VERSION)
        self._challenge = message.server_version.resume_challenge
        self.reanchoring = self._may_reanchor and message.server_version.reanchoring
        self.window = max(1, min(self.policy.payment_window,
                                 message.server_version.payment_window))
        self.state = (ClientState.WAITING_FOR_OPEN if self._resuming
                      else ClientState.WAITING_FOR_INITIATE)
        return []

    def _on_initiate(self, message: T) -> list[Effect]:
        if self.state is ClientState.WAITING_FOR_OPEN:
            return self._resume_refused()
        body = message.initiate
        latest = self.now + self.policy.time_window + EXPIRY_SLACK
        if not self.now < body.expire_time_secs <= latest:
            raise RemoteProtocolError(
                f"expiry {body.expire_time_secs} is outside our window (now {self.now}, "
                f"window {self.policy.time_window} s)", ErrorCode.TIME_WINDOW_UNACCEPTABLE)
        if body.min_accepted_channel_size > self.policy.value:
            raise RemoteProtocolError(
                f"the channel is too small: {self.policy.value} sat, and the server accepts "
                f"channels of at least {body.min_accepted_channel_size} sat; open a larger one "
                f"({VALUE_CODE_NOTE})",
                ErrorCode.CHANNEL_VALUE_TOO_LARGE, self.policy.value)
        if body.min_payment > self.policy.max_min_payment or body.min_payment >= self.policy.value:
            raise RemoteProtocolError(
                f"server's minimum payment {body.min_payment} is above our limit "
                f"{self.policy.max_min_payment}", ErrorCode.MIN_PAYMENT_TOO_LARGE,
                self.policy.max_min_payment)
        try:
            self.server_pub = PublicKey(body.multisig_key).data
        except DecodeError as exc:
            raise bad_tx(f"server key is not a canonical compressed public key: {exc}") from None
        self.expiry, self.min_payment = body.expire_time_secs, max(body.min_payment, 1)
        self.state = ClientState.FUNDING
        script = output_script(self.version, self.key.pub.data, self.server_pub, self.expiry)
        return [FundContract(script, self.policy.value)]

    def _resume_refused(self) -> list[Effect]:
        """INITIATE in answer to our resume: the server does not know the channel."""
        record = self.record
        if not self._resuming or record is None:
            raise RemoteProtocolError("unexpected INITIATE while waiting for CHANNEL_OPEN",
                                      ErrorCode.SYNTAX_ERROR)
        self.state = ClientState.CLOSED
        return [ResumeRefused(record.channel_id),
                Disconnect(f"the server no longer has channel {record.channel_id} open")]

    def _on_return_refund(self, message: T) -> list[Effect]:
        assert self._contract is not None and self._refund is not None
        signature = message.return_refund.signature
        self._contract.check_server_refund_signature(self._refund, signature)
        refund = self._contract.sign_refund(self.key, self._refund, signature)
        return self._provide_contract(refund.serialize())

    def _provide_contract(self, refund_tx: bytes | None) -> list[Effect]:
        contract = self._contract
        assert contract is not None
        change = round_change(contract.value - self.min_payment)  # the initial payment
        signature = contract.sign_payment(self.key, change)
        record = ChannelRecord(Role.CLIENT, contract, self._contract_tx, self.key, change,
                               signature, refund_tx=refund_tx, peer=self.peer, payments=1)
        self.record, self.state = record, ClientState.WAITING_FOR_OPEN
        # With a pre-signed refund, the client's key went in PROVIDE_REFUND.
        client_key = None if self.kind.capabilities.presigned_refund else self.key.pub.data
        return [StoreChannel(record),
                Send(messages.provide_contract(self._contract_tx, change, signature, client_key))]

    def _on_channel_open(self, message: T) -> list[Effect]:
        record = self.record
        assert record is not None
        self.opened, self.state = True, ClientState.OPEN
        effects: list[Effect] = [ChannelOpened(record, resumed=self._resuming)]
        if self._resuming:
            # The last payment may not have reached the server: send it again (the server
            # acknowledges a repeat without counting it twice). It also proves to the server
            # that this connection holds the channel's key (v3: by signing its challenge).
            proof = (self.key.sign(resume_digest(self._challenge, record.channel_id))
                     if self._challenge else b"")
            self.state = ClientState.WAITING_FOR_ACK
            self._in_flight.append((0, b""))
            pending = record.pending if record.pending and record.pending.binding else None
            effects.append(Send(messages.update_payment(  # on both while a re-anchor binds
                record.change, record.signature, resume_proof=proof,
                next_signature=pending.signature if pending else b"")))
            if pending is not None and not pending.complete and self.reanchoring:
                effects.append(Send(self._signed_message(record)))  # the server may not have it
        return effects

    def _on_payment_ack(self, message: T) -> list[Effect]:
        record = self.record
        assert record is not None
        amount, _ = self._in_flight.popleft() if self._in_flight else (0, b"")
        effects: list[Effect] = [PaymentAcknowledged(record, amount, message.payment_ack.info)]
        if self._in_flight:  # more payments await their acks
            return effects
        if self.state is ClientState.CLOSE_AFTER_ACK and record.change:
            effects.append(Send(self._close_message()))
        self.state = (ClientState.OPEN if self.state is ClientState.WAITING_FOR_ACK
                      and record.change else ClientState.CLOSING)
        return effects

    def _close_message(self) -> T:
        """CLOSE, with a fresh MuSig2 nonce when the kind closes by key path."""
        if not self.kind.capabilities.key_path_close:
            return messages.close()
        self._secnonce, self._nonce = self._stored().contract.kind.close_nonce(self.key)
        return messages.close(musig_nonce=self._nonce)

    def _on_close(self, message: T) -> list[Effect]:
        record = self.record
        assert record is not None
        if message.musig_settlement and not message.HasField("settlement"):
            return self._sign_key_path_close(record, message)
        self.state = ClientState.CLOSED
        if not message.HasField("settlement"):
            return [Disconnect("server closed without a settlement; watch the chain")]
        settlement = Transaction.parse(message.settlement.tx)
        check_settlement(record, settlement)
        return [*self._closed_by(settlement), Disconnect("channel settled")]

    def _sign_key_path_close(self, record: ChannelRecord, message: T) -> list[Effect]:
        """The server's unsigned key-path settlement and its nonce: checked to be exactly the
        settlement our contract would draft (our change to us, the rest to the server), our
        partial signature back. The server signs last, alone: our partial signature only
        completes this settlement, and only the server can complete it."""
        secnonce, self._secnonce = self._secnonce, None
        if secnonce is None or self.state is not ClientState.CLOSING:
            raise bad_tx("a key-path settlement to sign, but no MuSig2 session of ours is open "
                         "(a replayed proposal?)")
        settlement = Transaction.parse(message.musig_settlement)
        check_key_path_proposal(record, settlement)
        try:
            signature = record.contract.kind.sign_close(
                self.key, secnonce, self._nonce, message.musig_nonce, settlement)
        except MusigError as exc:
            raise bad_tx(f"the server's key-path settlement cannot be signed: {exc}") from None
        return [Send(messages.close(musig_partial_signature=signature))]

    def _closed_by(self, settlement: Transaction) -> list[Effect]:
        closing = replace(self._stored(), status=ChannelStatus.CLOSING,
                          settlement_tx=settlement.serialize())
        self.record, self.state = closing, ClientState.CLOSED
        return [StoreChannel(closing), ChannelClosed(closing, settlement)]

    def _stored(self) -> ChannelRecord:
        assert self.record is not None
        return self.record

    def _send_payment(self, record: ChannelRecord, change: int, info: bytes) -> list[Effect]:
        signature = record.contract.sign_payment(self.key, change)
        pending, next_signature = record.pending, b""
        if pending is not None and pending.binding:  # signed on C' too, until R confirms
            next_signature = pending.contract.sign_payment(
                self.key, change + pending.offset(record.contract))
            updated = record.with_payments(change, signature, next_signature)
        else:
            updated = record.with_payment(change, signature)
        self.record = updated
        amount = record.change - change
        self._in_flight.append((amount, info))
        self.state = ClientState.WAITING_FOR_ACK
        return [StorePayment(updated, amount, info),
                Send(messages.update_payment(change, signature, info,
                                             next_signature=next_signature))]


def check_settlement(record: ChannelRecord, settlement: Transaction) -> None:
    """Raise RemoteProtocolError unless `settlement` spends our contract and pays us at least
    the change of our latest payment."""
    contract = record.contract
    if not settlement.inputs or settlement.inputs[0].prevout != contract.outpoint:
        raise bad_tx("the settlement does not spend our contract")
    if record.change:
        first = settlement.outputs[0] if settlement.outputs else None
        if (first is None or first.script_pubkey != contract.change_script
                or first.value < record.change):
            raise bad_tx(f"the settlement does not pay our change of {record.change} sat")


def check_key_path_proposal(record: ChannelRecord, proposal: Transaction) -> None:
    """Raise RemoteProtocolError unless the unsigned key-path settlement the server asks us to
    sign is our contract's settlement draft: version 1, lock time 0, the contract its one
    (FINAL) input, output 0 exactly our change to our own script (none when we keep none),
    and at most one more output (the server's share, to any script)."""
    check_settlement(record, proposal)
    contract = record.contract
    shares = proposal.outputs[1 if record.change else 0:]
    if len(shares) > 1:
        raise bad_tx(f"the key-path settlement has {len(proposal.outputs)} outputs, not our "
                     "change and the server's share")
    expected = (contract.settlement_draft(record.change, shares[0].value,
                                          shares[0].script_pubkey)
                if shares else contract.payment_tx(record.change))
    wrong = [what for what, differs in (
        (f"version {proposal.version}, not {expected.version}",
         proposal.version != expected.version),
        (f"lock time {proposal.locktime}, not 0", proposal.locktime != expected.locktime),
        ("inputs other than the contract alone with a FINAL sequence",
         proposal.inputs != expected.inputs),
        (f"outputs other than exactly our change of {record.change} sat and the server's share",
         proposal.outputs != expected.outputs)) if differs]
    if wrong:
        raise bad_tx(f"the key-path settlement is not our contract's settlement draft: it has "
                     f"{'; '.join(wrong)}")
