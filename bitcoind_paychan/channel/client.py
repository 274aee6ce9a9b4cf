"""The client's side of one connection, as a sans-IO state machine.

The application calls `start`, `pay` and `close`; the adapter feeds messages and the funded
contract in and carries out the effects. Every payment is stored before it is sent.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace

from bitcoind_paychan.bitcoin.keys import PrivateKey, PublicKey
from bitcoind_paychan.bitcoin.tx import Transaction
from bitcoind_paychan.channel import messages
from bitcoind_paychan.channel.contract import (
    V1_REFUND_FEE,
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
from bitcoind_paychan.channel.machine import Handler, ProtocolMachine
from bitcoind_paychan.channel.messages import DEFAULT_TIME_WINDOW
from bitcoind_paychan.channel.records import ChannelRecord, ChannelStatus, Role
from bitcoind_paychan.errors import (
    DecodeError,
    ErrorCode,
    LocalProtocolError,
    PolicyError,
    RemoteProtocolError,
)
from bitcoind_paychan.wire import error_code, pb

T = pb.TwoWayChannelMessage
EXPIRY_SLACK = 60  # seconds of clock difference tolerated on the server's expiry


@dataclass(frozen=True)
class ClientPolicy:
    """What the client wants: the channel's value and what it accepts from a server."""

    value: int = 1_000_000
    time_window: int = DEFAULT_TIME_WINDOW
    max_min_payment: int = 10_000

    def __post_init__(self) -> None:
        for name in ("value", "time_window", "max_min_payment"):
            if getattr(self, name) < 1:
                raise PolicyError(name, f"found {getattr(self, name)}, expected an integer ≥ 1")


class ClientState(enum.Enum):
    IDLE = "not started"
    WAITING_FOR_VERSION = "waiting for SERVER_VERSION"
    WAITING_FOR_INITIATE = "waiting for INITIATE"
    FUNDING = "funding the contract"
    WAITING_FOR_REFUND = "waiting for RETURN_REFUND"
    WAITING_FOR_OPEN = "waiting for CHANNEL_OPEN"
    OPEN = "open"
    WAITING_FOR_ACK = "waiting for PAYMENT_ACK"
    CLOSING = "waiting for the settlement"
    CLOSED = "closed"


class ClientChannel(ProtocolMachine):
    """One connection to a server on the client side; `resume` continues a stored channel."""

    state: ClientState
    closed = ClientState.CLOSED
    peer_name = "server"

    def __init__(self, policy: ClientPolicy, key: PrivateKey, now: int, version: int = 3,
                 resume: ChannelRecord | None = None, peer: str = "") -> None:
        self.policy = policy
        self.key = resume.key if resume else key
        self.now = now
        self.version = resume.version if resume else version
        self.peer = peer
        self.record = resume
        self.state = ClientState.IDLE
        self.min_payment = 0
        self.expiry = 0
        self.server_pub = b""
        self._contract: Contract | None = None
        self._contract_tx = b""
        self._refund: Transaction | None = None
        self._pending: tuple[int, bytes] | None = None  # (amount, info) awaiting its ack
        self.handlers: dict[tuple[enum.Enum, int], Handler] = {
            (ClientState.WAITING_FOR_VERSION, T.SERVER_VERSION): self._on_server_version,
            (ClientState.WAITING_FOR_INITIATE, T.INITIATE): self._on_initiate,
            (ClientState.WAITING_FOR_REFUND, T.RETURN_REFUND): self._on_return_refund,
            (ClientState.WAITING_FOR_OPEN, T.CHANNEL_OPEN): self._on_channel_open,
            (ClientState.WAITING_FOR_OPEN, T.CLOSE): self._on_close,
            (ClientState.WAITING_FOR_OPEN, T.INITIATE): self._on_initiate_to_resume,
            (ClientState.WAITING_FOR_ACK, T.PAYMENT_ACK): self._on_payment_ack,
            (ClientState.OPEN, T.CLOSE): self._on_close,
            (ClientState.WAITING_FOR_ACK, T.CLOSE): self._on_close,
            (ClientState.CLOSING, T.CLOSE): self._on_close,
        }

    @property
    def resuming(self) -> bool:
        return self.record is not None and self._contract is None

    # -- application calls -----------------------------------------------------------------

    def start(self) -> list[Effect]:
        """Say hello: CLIENT_VERSION (naming the stored channel when resuming)."""
        if self.state is not ClientState.IDLE:
            raise LocalProtocolError("start() called twice")
        self.state = ClientState.WAITING_FOR_VERSION
        previous = self.record.contract_txid if self.record else None
        return [Send(messages.client_version(self.version, self.policy.time_window, previous))]

    def contract_funded(self, contract_tx: Transaction) -> list[Effect]:
        """The answer to FundContract: the wallet's signed, unbroadcast contract."""
        if self.state is not ClientState.FUNDING:
            raise LocalProtocolError(f"contract_funded while {self.state.value}")
        contract = contract_from_tx(self.version, contract_tx, self.key.pub.data,
                                    self.server_pub, self.expiry)
        if contract.value != self.policy.value:
            raise LocalProtocolError(f"the wallet funded {contract.value}, not {self.policy.value}")
        self._contract, self._contract_tx = contract, contract_tx.serialize()
        if self.version == 1:
            self._refund = contract.refund_tx(V1_REFUND_FEE)
            self.state = ClientState.WAITING_FOR_REFUND
            return [Send(messages.provide_refund(self.key.pub.data, self._refund.serialize()))]
        return self._provide_contract(b"")

    def pay(self, amount: int, info: bytes = b"") -> list[Effect]:
        """Pay `amount` more: store the new signature, then send it. Change below dust goes to
        the server too, so the channel may be exhausted by a slightly larger payment."""
        record = self.record
        if self.state is not ClientState.OPEN or record is None:
            raise LocalProtocolError(f"cannot pay while {self.state.value}")
        if amount <= 0:
            raise LocalProtocolError(f"payment amount must be positive, not {amount}")
        if amount > record.change:
            raise LocalProtocolError(f"the channel has {record.change} sat left; "
                                     f"cannot pay {amount}")
        change = round_change(record.change - amount)
        if record.change - change < self.min_payment and change:
            raise LocalProtocolError(f"{amount} sat is below the server's minimum payment "
                                     f"of {self.min_payment} sat")
        return self._send_payment(record, change, info)

    def close(self) -> list[Effect]:
        """Ask the server to settle."""
        if self.state not in (ClientState.OPEN, ClientState.WAITING_FOR_ACK):
            raise LocalProtocolError(f"cannot close while {self.state.value}")
        self.state = ClientState.CLOSING
        return [Send(messages.close())]

    def connection_lost(self) -> list[Effect]:
        self.state = ClientState.CLOSED
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
        self.state = (ClientState.WAITING_FOR_OPEN if self.record
                      else ClientState.WAITING_FOR_INITIATE)
        return []

    def _on_initiate(self, message: T) -> list[Effect]:
        body = message.initiate
        latest = self.now + self.policy.time_window + EXPIRY_SLACK
        if not self.now < body.expire_time_secs <= latest:
            raise RemoteProtocolError(
                f"expiry {body.expire_time_secs} is outside our window (now {self.now}, "
                f"window {self.policy.time_window} s)", ErrorCode.TIME_WINDOW_UNACCEPTABLE)
        if body.min_accepted_channel_size > self.policy.value:
            raise RemoteProtocolError(
                f"the channel is too small: {self.policy.value} sat, and the server accepts "
                f"channels of at least {body.min_accepted_channel_size} sat; open a larger one",
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

    def _on_initiate_to_resume(self, message: T) -> list[Effect]:
        """The server does not know the channel we asked to resume."""
        if self.record is None or not self.resuming:
            raise RemoteProtocolError("unexpected INITIATE while waiting for CHANNEL_OPEN",
                                      ErrorCode.SYNTAX_ERROR)
        self.state = ClientState.CLOSED
        return [ResumeRefused(self.record.contract_txid),
                Disconnect(f"the server no longer has channel {self.record.contract_txid} "
                           "open")]

    def _on_return_refund(self, message: T) -> list[Effect]:
        assert self._contract is not None and self._refund is not None
        signature = message.return_refund.signature
        self._contract.check_server_refund_signature(self._refund, signature)
        refund = self._contract.sign_refund(self.key, self._refund, signature)
        return self._provide_contract(refund.serialize())

    def _provide_contract(self, refund_tx: bytes) -> list[Effect]:
        contract = self._contract
        assert contract is not None
        change = round_change(contract.value - self.min_payment)
        signature = contract.sign_payment(self.key, change)
        record = ChannelRecord(Role.CLIENT, contract, self._contract_tx, self.key, change,
                               signature, refund_tx=refund_tx, peer=self.peer, payments=1)
        self.record, self.state = record, ClientState.WAITING_FOR_OPEN
        client_key = self.key.pub.data if self.version >= 2 else None
        return [StoreChannel(record),
                Send(messages.provide_contract(self._contract_tx, change, signature, client_key))]

    def _on_channel_open(self, message: T) -> list[Effect]:
        record = self.record
        assert record is not None
        resumed = self.resuming
        self.state = ClientState.OPEN
        effects: list[Effect] = [ChannelOpened(record, resumed=resumed)]
        if resumed:
            # The last payment may not have reached the server: send it again (the server
            # acknowledges a repeat without counting it twice).
            self.state = ClientState.WAITING_FOR_ACK
            self._pending = (0, b"")
            effects.append(Send(messages.update_payment(record.change, record.signature)))
        return effects

    def _on_payment_ack(self, message: T) -> list[Effect]:
        assert self.record is not None and self._pending is not None
        amount, _ = self._pending
        self._pending = None
        self.state = ClientState.OPEN if self.record.change else ClientState.CLOSING
        return [PaymentAcknowledged(self.record, amount, message.payment_ack.info)]

    def _on_close(self, message: T) -> list[Effect]:
        record = self.record
        assert record is not None
        self.state = ClientState.CLOSED
        if not message.HasField("settlement"):
            return [Disconnect("server closed without a settlement; watch the chain")]
        settlement = Transaction.parse(message.settlement.tx)
        check_settlement(record, settlement)
        closing = replace(record, status=ChannelStatus.CLOSING,
                          settlement_tx=message.settlement.tx)
        self.record = closing
        return [StoreChannel(closing), ChannelClosed(closing, settlement),
                Disconnect("channel settled")]

    def _send_payment(self, record: ChannelRecord, change: int, info: bytes) -> list[Effect]:
        amount = record.change - change
        signature = record.contract.sign_payment(self.key, change)
        self.record = updated = record.with_payment(change, signature)
        self._pending = (amount, info)
        self.state = ClientState.WAITING_FOR_ACK
        return [StorePayment(updated, amount, info),
                Send(messages.update_payment(change, signature, info))]


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
