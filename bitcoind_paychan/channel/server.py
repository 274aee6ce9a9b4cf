"""The server's side of one connection, as a sans-IO state machine.

Messages and answers (a loaded channel, a fee rate) go in; effects come out. Nothing here
touches a socket, the node, the store or a clock: `now` is given at construction.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, replace

from bitcoind_paychan.bitcoin.keys import PrivateKey, PublicKey
from bitcoind_paychan.bitcoin.tx import Transaction
from bitcoind_paychan.channel import messages, reanchor_autopilot
from bitcoind_paychan.channel.contract import (
    DUST,
    Branch,
    Contract,
    bad_tx,
    check_refund_request,
    contract_from_tx,
    locking_script,
    output_script,
)
from bitcoind_paychan.channel.effects import (
    Broadcast,
    ChannelClosed,
    ChannelOpened,
    CheckContract,
    ClaimChannel,
    Disconnect,
    Effect,
    FundSettlement,
    LoadChannel,
    PaymentReceived,
    PeerError,
    PrepareSettlement,
    Purpose,
    Send,
    StoreChannel,
    StorePayment,
)
from bitcoind_paychan.channel.kinds.base import Capabilities
from bitcoind_paychan.channel.kinds.registry import VERSIONS, kind_of
from bitcoind_paychan.channel.machine import (
    VALUE_CODE_NOTE,
    FastEnum,
    Handler,
    Input,
    ProtocolMachine,
    resume_challenge,
    resume_digest,
    table,
)
from bitcoind_paychan.channel.reanchor import without_unchecked
from bitcoind_paychan.channel.reanchor_server import QUOTES_KEPT, ServerReanchoring
from bitcoind_paychan.channel.records import ChannelRecord, ChannelStatus, Role
from bitcoind_paychan.errors import (
    DecodeError,
    ErrorCode,
    LocalProtocolError,
    MusigError,
    PolicyError,
    RemoteProtocolError,
)
from bitcoind_paychan.wire import pb

T = pb.TwoWayChannelMessage
# The least settle margin: the server settles at least this long before the client's refund
# is valid. The margin itself is one policy value, `WatchPolicy.settle_margin` (the autopilot
# settles then); the service hands it to the machines as `ServerPolicy.settle_margin`.
SETTLEMENT_MARGIN = 2 * 3600
# UPDATE_PAYMENTs a client may send before the first is acknowledged (SERVER_VERSION's
# payment_window): they wait in the connection, handled and acknowledged in order.
PAYMENT_WINDOW = 64


@dataclass(frozen=True)
class ServerPolicy:
    """What the server accepts. Windows are clamped into [min, max] as bitcoinj does.
    `min_payment` bounds the initial payment only (bitcoinj's meaning: the channel can always
    be settled above dust); later increments need only be at least `min_increment`.
    `settle_margin`: how long before the expiry a resume settles instead of taking payments;
    a PaymentServer sets its autopilot's (`WatchPolicy.settle_margin`), so both agree."""

    min_channel_size: int = 100_000
    min_payment: int = 1_000
    min_time_window: int = 4 * 3600
    max_time_window: int = 7 * 24 * 3600
    versions: tuple[int, ...] = VERSIONS
    require_segwit_funding: bool = False  # every version's contracts must spend segwit coins,
    # not only those of the kinds that require it (Capabilities.segwit_funding_required)
    min_increment: int = 1
    settle_margin: int = SETTLEMENT_MARGIN
    max_fee_rate: int = 200_000  # sat/kvB: the most a re-anchor's quote or R may pay (the
    # service sets its FeePolicy's cap)
    reanchoring: bool = False  # offer re-anchoring (issue 23) where the kind can
    # The autopilot's quotes sent unasked (reanchor_autopilot.py; 0: off): a payout once the
    # client acknowledged `payout_above` sat, a renewal within `renew_before` s of the expiry.
    payout_above: int = 0
    renew_before: int = 0

    def __post_init__(self) -> None:
        unknown = [v for v in self.versions if v not in VERSIONS]
        if unknown or not self.versions:
            raise PolicyError("versions", f"found {list(self.versions)}, expected some of "
                                          f"{', '.join(map(str, VERSIONS))}")
        for name in ("min_channel_size", "min_payment"):
            if getattr(self, name) < 1:
                raise PolicyError(name, f"found {getattr(self, name)}, expected an integer ≥ 1")
        if self.min_channel_size <= self.min_payment:
            raise PolicyError("min_payment", f"found {self.min_payment}, expected less than "
                                             f"min_channel_size ({self.min_channel_size})")
        if self.settle_margin < SETTLEMENT_MARGIN:
            raise PolicyError("settle_margin", f"found {self.settle_margin}, expected an "
                                               f"integer ≥ {SETTLEMENT_MARGIN} (seconds)")
        if self.min_time_window <= self.settle_margin:
            raise PolicyError("min_time_window", f"found {self.min_time_window}, expected more "
                                                 f"than {self.settle_margin} s (the server "
                                                 "settles that long before expiry)")
        if self.max_time_window < self.min_time_window:
            raise PolicyError("max_time_window", f"found {self.max_time_window}, expected at "
                                                 f"least min_time_window ({self.min_time_window})")
        if self.max_fee_rate < 1000:
            raise PolicyError("max_fee_rate", f"found {self.max_fee_rate}, expected at least "
                                              "1000 sat/kvB")
        if self.min_increment < 1:
            raise PolicyError("min_increment", f"found {self.min_increment}, expected an "
                                               "integer ≥ 1")
        reanchor_autopilot.check_server(self)


class ServerState(FastEnum):
    WAITING_FOR_VERSION = "waiting for CLIENT_VERSION"
    LOADING_CHANNEL = "looking up the channel to resume"
    WAITING_FOR_REFUND = "waiting for PROVIDE_REFUND"
    WAITING_FOR_CONTRACT = "waiting for PROVIDE_CONTRACT"
    CHECKING_CONTRACT = "asking the node about the contract"
    RESUMED = "waiting for a payment proving the resumed channel is the client's"
    OPEN = "open"
    SETTLING = "settling"
    COSIGNING = "waiting for the client's partial signature of the key-path close"
    CLOSED = "closed"


S = ServerState
TABLE = table({
    (S.WAITING_FOR_VERSION, T.CLIENT_VERSION): {S.LOADING_CHANNEL, S.WAITING_FOR_REFUND,
                                                S.WAITING_FOR_CONTRACT},
    (S.LOADING_CHANNEL, Input.CHANNEL_LOADED): {S.RESUMED, S.SETTLING, S.CLOSED,
                                                S.WAITING_FOR_REFUND, S.WAITING_FOR_CONTRACT},
    (S.WAITING_FOR_REFUND, T.PROVIDE_REFUND): {S.WAITING_FOR_CONTRACT},
    (S.WAITING_FOR_CONTRACT, T.PROVIDE_CONTRACT): {S.CHECKING_CONTRACT},
    (S.CHECKING_CONTRACT, Input.CONTRACT_CHECKED): {S.OPEN, S.SETTLING},  # or refused: closed
    (S.RESUMED, T.UPDATE_PAYMENT): {S.OPEN, S.SETTLING},  # the proof; CLOSE is refused
    (S.OPEN, T.UPDATE_PAYMENT): {S.OPEN, S.SETTLING},
    (S.OPEN, T.CLOSE): {S.SETTLING},
    (S.OPEN, Input.SETTLE): {S.SETTLING, S.CLOSED},  # the application settles
    # SETTLING: waiting for a wallet input; COSIGNING: the client's CLOSE offered a MuSig2
    # nonce, and the unsigned key-path settlement went to it with the server's nonce (never
    # the server's partial signature)
    (S.SETTLING, Input.SETTLE): {S.SETTLING, S.COSIGNING, S.CLOSED},
    (S.SETTLING, Input.SETTLE_FUNDED): {S.CLOSED},
    # the client's partial signature: settled by key path; else ERROR, and settled through
    # the payment leaf (SETTLING: its fee needs a wallet input)
    (S.COSIGNING, T.CLOSE): {S.CLOSED, S.SETTLING},
    # The stored channel turned out CLOSING (settled by another connection or instance since
    # this one loaded it): answer with that settlement, take nothing more.
    (S.RESUMED, Input.SETTLEMENT_DECIDED): {S.CLOSED},
    (S.OPEN, Input.SETTLEMENT_DECIDED): {S.CLOSED},
    (S.SETTLING, Input.SETTLEMENT_DECIDED): {S.CLOSED},
    (S.COSIGNING, Input.SETTLEMENT_DECIDED): {S.CLOSED},
    # closed by a protocol violation later in the same batch, whose ERROR never left (the
    # batch's effects were dropped when its payment met the settlement): send that
    (S.CLOSED, Input.SETTLEMENT_DECIDED): {S.CLOSED},
    # The application's answer to a PaymentReceived: its ack goes out (even on a connection
    # closed since, by a later message of the same batch: the payment is stored).
    (S.OPEN, Input.PAYMENT_ANSWERED): {S.OPEN},
    (S.SETTLING, Input.PAYMENT_ANSWERED): {S.SETTLING},
    (S.COSIGNING, Input.PAYMENT_ANSWERED): {S.COSIGNING},
    (S.CLOSED, Input.PAYMENT_ANSWERED): {S.CLOSED},
    # Re-anchoring (docs/design/reanchoring.md), on an open channel that negotiated it; the
    # channel stays OPEN throughout (payments go on). PROPOSE asks for a quote
    # (PrepareReanchor); a quote (that answer, or the application's wish) sends TERMS;
    # SIGNED is checked and signed, then the node is asked (CheckReanchor); its answer
    # stores R, broadcasts it and sends ACK, or refuses. Settling: refused, nothing changes.
    (S.OPEN, T.REANCHOR_PROPOSE): {S.OPEN},
    (S.OPEN, Input.REANCHOR_QUOTE): {S.OPEN},
    (S.OPEN, T.REANCHOR_SIGNED): {S.OPEN},
    (S.OPEN, Input.REANCHOR_CHECKED): {S.OPEN},
    (S.SETTLING, Input.REANCHOR_CHECKED): {S.SETTLING},
    (S.COSIGNING, Input.REANCHOR_CHECKED): {S.COSIGNING},
    (S.CLOSED, Input.REANCHOR_CHECKED): {S.CLOSED},
    (S.SETTLING, T.REANCHOR_PROPOSE): {S.SETTLING},
    (S.SETTLING, T.REANCHOR_SIGNED): {S.SETTLING},
    (S.COSIGNING, T.REANCHOR_PROPOSE): {S.COSIGNING},
    (S.COSIGNING, T.REANCHOR_SIGNED): {S.COSIGNING},
    # R confirmed (the watcher promoted the stored channel): the next contract is ours
    (S.OPEN, Input.REANCHOR_CONFIRMED): {S.OPEN},
    (S.RESUMED, Input.REANCHOR_CONFIRMED): {S.RESUMED},
    (S.CLOSED, Input.REANCHOR_CONFIRMED): {S.CLOSED},
}, ServerState, S.CLOSED)


class ServerChannel(ServerReanchoring, ProtocolMachine):
    """One client connection on the server side; `resumed_from` acts on a stored channel
    with no connection (the application settling it).

    Inputs besides `receive(message)`: `channel_loaded(record | None)` (answers LoadChannel),
    `contract_checked(refusal, retryable)` (answers CheckContract),
    `settle(fee_rate, payout_script)` (answers PrepareSettlement, or settles an open
    channel), `settle_funded(tx)` (answers FundSettlement), `settlement_decided(record)` (the
    stored channel was found CLOSING), `payment_answered(received, info)` (answers PaymentReceived:
    the ack, carrying the application's info), `connection_lost()`. `TABLE`
    lists which are legal in which state. A resumed connection owns the channel (and may
    CLOSE) only once its first UPDATE_PAYMENT proves it holds the client's contract key."""

    TABLE = TABLE
    state: ServerState
    closed = ServerState.CLOSED
    peer_name = "client"

    def __init__(self, policy: ServerPolicy, key: PrivateKey, now: int, peer: str = "") -> None:
        self.policy = policy
        self.key = key
        self.now = now
        self.peer = peer  # who the application says the client is; stored with its channel
        self.state = ServerState.WAITING_FOR_VERSION
        self.version = 0
        self.expiry = 0
        self.client_pub = b""
        self.refund_outpoint_txid = b""
        self.challenge = b""
        self.record: ChannelRecord | None = None
        self._unanswered: deque[int] = deque()  # numbers of the payments awaiting their acks
        self._client_nonce = b""  # the MuSig2 nonce of the client's CLOSE, for one session
        self._cosigning: Cosigning | None = None
        self.reanchoring = False
        self.acked_change = 0
        self._wish = (0, 0)
        self._quoted = deque(maxlen=QUOTES_KEPT)
        self._preparing = False
        self._checking = None
        self._checking_terms = None
        self._locked_offset = None
        self._maybe_current = False
        self.handlers: dict[int, Handler] = {
            T.CLIENT_VERSION: self._on_client_version,
            T.PROVIDE_REFUND: self._on_provide_refund,
            T.PROVIDE_CONTRACT: self._on_provide_contract,
            T.UPDATE_PAYMENT: self._on_update_payment,
            T.CLOSE: self._on_close,
            T.REANCHOR_PROPOSE: self._on_reanchor_message,
            T.REANCHOR_SIGNED: self._on_reanchor_message,
        }

    @classmethod
    def resumed_from(cls, policy: ServerPolicy, record: ChannelRecord, now: int
                     ) -> ServerChannel:
        """A machine for a stored open channel with no client connected (to settle it)."""
        if record.status is not ChannelStatus.OPEN:
            raise LocalProtocolError(f"channel {record.channel_id} is {record.status}, "
                                     "not open")
        machine = cls(policy, record.key, now)
        record = without_unchecked(record)
        machine.version, machine.record, machine.state = record.version, record, S.OPEN
        machine.acked_change = record.change
        return machine

    def receive_pipelined(self, received: Sequence[T], now: int | None = None
                          ) -> tuple[list[Effect], int]:
        """Messages received together (at `now`) on an open channel: handled in order as
        `receive` would handle each (every payment's signature verified), while the channel
        stays open; returns the effects and how many messages were taken (the rest wait until
        these effects are carried out)."""
        if now is not None:
            self.now = now
        if self.state is not ServerState.OPEN:
            return self.receive(received[0]), 1
        return self._take_while_open(received)

    def _take_while_open(self, received: Sequence[T]) -> tuple[list[Effect], int]:
        effects: list[Effect] = []
        for taken, message in enumerate(received, 1):
            effects += self.receive(message)
            if self.state is not ServerState.OPEN:
                return effects, taken
        return effects, len(received)

    # -- inputs ----------------------------------------------------------------------------

    def payment_answered(self, received: PaymentReceived, info: bytes = b"") -> list[Effect]:
        """The application's answer to `received`: its ack, with `info` attached. Nothing for
        a payment with no ack to send (the opening's initial one: CHANNEL_OPEN answers it; or
        one answered already). Answers come in the order the payments were received."""
        return self._input(Input.PAYMENT_ANSWERED, self._on_payment_answered, received, info)

    def _on_payment_answered(self, received: PaymentReceived, info: bytes) -> list[Effect]:
        number = received.record.payments
        if number not in self._unanswered:
            return []
        if number != self._unanswered[0]:
            raise LocalProtocolError(f"payment {number} answered before payment "
                                     f"{self._unanswered[0]}: answer them in order")
        self._unanswered.popleft()
        paid = received.record
        # A payment stored before a promotion this connection made since counts on the
        # next contract (its change there: the one it carried).
        moved = paid.pending is not None and self._record().generation > paid.generation
        self.acked_change = paid.pending.change if moved and paid.pending else paid.change
        return [Send(messages.payment_ack(info))]

    def channel_loaded(self, record: ChannelRecord | None, locked_offset: int | None = None
                       ) -> list[Effect]:
        """The answer to LoadChannel: the stored channel, or None if there is none. For a
        re-anchored channel (generation > 0), `locked_offset` is its last re-anchor's offset:
        a client that has not heard of the promotion re-sends its payment on both contracts
        (counted by its signature on the current one) and is told REANCHOR_LOCKED."""
        return self._input(Input.CHANNEL_LOADED, self._on_channel_loaded, record, locked_offset)

    def _on_channel_loaded(self, record: ChannelRecord | None,
                           locked_offset: int | None = None) -> list[Effect]:
        if record is not None and record.version == self.version and _settlement_of(record):
            # Settling already: its one settlement is the answer (bitcoinj checks and stores it).
            self.record, self.state = record, ServerState.CLOSED
            return [Send(messages.server_version(self.version)), *self._settled_before(record)]
        if record is None or record.status is not ChannelStatus.OPEN or (
                record.version != self.version):
            return self._initiate()  # nothing to resume: a fresh channel, as bitcoinj does
        self.record = record = without_unchecked(record)
        if record.contract.expiry - self.now <= self.policy.settle_margin:
            # Too close to the client's refund to take more payments: settle instead (what
            # the autopilot does anyway, so no proof is needed). The settlement claims the
            # channel's settling duty, then its lease: a resume that finds the duty taken
            # fences nobody.
            self.state = ServerState.SETTLING
            return [Send(messages.server_version(self.version)),
                    PrepareSettlement(record.channel_id)]
        self.state, self.acked_change = ServerState.RESUMED, record.change
        if self.capabilities.resume_challenge:
            self.challenge = resume_challenge(self.key.secret)
        effects: list[Effect] = [
            Send(messages.server_version(self.version, self.challenge, self._window,
                                         self.reanchoring)),
            Send(messages.channel_open())]
        if self.reanchoring and record.generation and locked_offset is not None:
            self._locked_offset, self._maybe_current = locked_offset, True
            effects.append(Send(messages.reanchor_locked(record.contract_txid)))
        return effects

    def contract_checked(self, refusal: str | None, retryable: bool = False) -> list[Effect]:
        """The answer to CheckContract: None if the node would accept the contract (store,
        broadcast, open); else the node's reason, `retryable` when the node could not be asked
        (the client should try again later). Nothing is stored for a refused contract."""
        return self._input(Input.CONTRACT_CHECKED, self._on_contract_checked, refusal,
                           retryable)

    def _on_contract_checked(self, refusal: str | None, retryable: bool) -> list[Effect]:
        if refusal is None:
            return self._opened(self._record())
        self.record = None
        if retryable:
            return self.refuse(LocalProtocolError(
                f"the server's node is unavailable ({refusal}); nothing was stored and the "
                "contract was not broadcast: retry later", ErrorCode.OTHER))
        return self.refuse(RemoteProtocolError(f"the server's node refused the contract: "
                                               f"{refusal}", ErrorCode.BAD_TRANSACTION))

    def settle(self, fee_rate: int, payout_script: bytes) -> list[Effect]:
        """The answer to PrepareSettlement (or a close decided by the application): build,
        store and broadcast the settlement, tell the client, hang up. `fee_rate` is in sat/kvB
        (satoshis per 1,000 virtual bytes: 2_000 is 2 sat/vB); `payout_script` receives the
        server's share. When the share cannot pay the fee, ask for a wallet input instead
        (FundSettlement)."""
        return self._input(Input.SETTLE, self._on_settle, fee_rate, payout_script)

    def _on_settle(self, fee_rate: int, payout_script: bytes) -> list[Effect]:
        record = self._record()
        self.state = ServerState.SETTLING
        nonce, self._client_nonce = self._client_nonce, b""  # one session per nonce
        if nonce:
            proposal = self._propose_key_path(record, nonce, fee_rate, payout_script)
            if proposal:
                return proposal
        return self._settle_by_leaf(record, fee_rate, payout_script)

    def _settle_by_leaf(self, record: ChannelRecord, fee_rate: int, payout_script: bytes
                        ) -> list[Effect]:
        """The settlement both keys sign (v4: through the payment leaf), the fee from the
        server's share, or from a wallet input when the share cannot pay it."""
        self.state = ServerState.SETTLING
        contract = record.contract
        fee = contract.settlement_fee(record.change, payout_script, fee_rate)
        share = record.paid
        if share - fee < DUST:
            draft = contract.settlement_draft(record.change, share, payout_script)
            return [FundSettlement(draft, contract.spend_weight(), fee_rate)]
        draft = contract.settlement_draft(record.change, share - fee, payout_script)
        return self._settled(contract.sign_settlement(draft, record.signature, record.key))

    def settlement_decided(self, record: ChannelRecord) -> list[Effect]:
        """The stored channel is CLOSING (another connection or instance settled it after this
        one loaded it): send its settlement (CLOSE, without one if it holds none) and hang up;
        nothing more is stored or acknowledged here."""
        return self._input(Input.SETTLEMENT_DECIDED, self._on_settlement_decided, record)

    def _on_settlement_decided(self, record: ChannelRecord) -> list[Effect]:
        self.record, self.state = record, ServerState.CLOSED
        return self._settled_before(record)

    def _settled_before(self, record: ChannelRecord) -> list[Effect]:
        settlement = _settlement_of(record)
        return [Send(messages.close(settlement.serialize() if settlement else None)),
                Disconnect("channel settled before (its settlement sent)")]

    def settle_funded(self, funded: Transaction) -> list[Effect]:
        """The answer to FundSettlement: the draft with the wallet's inputs (signed) and
        change added. Checked to still pay the client and us exactly as drafted."""
        return self._input(Input.SETTLE_FUNDED, self._on_settle_funded, funded)

    def _on_settle_funded(self, funded: Transaction) -> list[Effect]:
        record = self._record()
        contract = record.contract
        if not funded.inputs or funded.inputs[0].prevout != contract.outpoint:
            raise LocalProtocolError("the funded settlement does not spend the contract first")
        payment = contract.payment_tx(record.change).outputs
        if funded.outputs[:len(payment)] != payment or len(funded.outputs) <= len(payment) or (
                funded.outputs[len(payment)].value != record.paid):
            raise LocalProtocolError("the wallet changed the settlement's channel outputs")
        return self._settled(contract.sign_settlement(funded, record.signature, record.key))

    def _record(self) -> ChannelRecord:
        assert self.record is not None, "the table admits this only with a channel"
        return self.record

    def _settled(self, settlement: Transaction) -> list[Effect]:
        closing = replace(self._record(), status=ChannelStatus.CLOSING,
                          settlement_tx=settlement.serialize())
        self.record, self.state = closing, ServerState.CLOSED
        return [StoreChannel(closing),
                Broadcast(settlement, Purpose.SETTLEMENT, closing.channel_id),
                Send(messages.close(settlement.serialize())), ChannelClosed(closing, settlement),
                Disconnect("channel settled")]

    @property
    def capabilities(self) -> Capabilities:
        """What the channel's kind can do (known once CLIENT_VERSION named it)."""
        return kind_of(self.version).capabilities

    @property
    def _window(self) -> int:
        """The payment window SERVER_VERSION offers: 1 (stop and wait) without pipelining."""
        return PAYMENT_WINDOW if self.capabilities.pipelining else 1

    # -- handlers --------------------------------------------------------------------------

    def _on_client_version(self, message: T) -> list[Effect]:
        body = message.client_version
        if body.major not in self.policy.versions:
            supported = ", ".join(map(str, self.policy.versions))
            raise RemoteProtocolError(f"major version {body.major} is not supported "
                                      f"(this server speaks {supported})",
                                      ErrorCode.NO_ACCEPTABLE_VERSION)
        self.version = body.major
        self.reanchoring = (self.policy.reanchoring and self.capabilities.reanchoring
                            and body.reanchoring)
        window = min(max(body.time_window_secs, self.policy.min_time_window),
                     self.policy.max_time_window)
        self.expiry = self.now + window
        if body.HasField("previous_channel_contract_hash"):
            previous = body.previous_channel_contract_hash
            if len(previous) != 32:
                raise RemoteProtocolError("previous_channel_contract_hash is not 32 bytes",
                                          ErrorCode.SYNTAX_ERROR)
            self.state = ServerState.LOADING_CHANNEL
            return [LoadChannel(previous.hex())]
        return self._initiate()

    def _initiate(self) -> list[Effect]:
        self.state = (ServerState.WAITING_FOR_REFUND if self.capabilities.presigned_refund
                      else ServerState.WAITING_FOR_CONTRACT)
        return [Send(messages.server_version(self.version, payment_window=self._window,
                                             reanchoring=self.reanchoring)),
                Send(messages.initiate(self.key.pub.data, self.policy.min_channel_size,
                                       self.expiry, self.policy.min_payment))]

    def _on_provide_refund(self, message: T) -> list[Effect]:
        body = message.provide_refund
        self.client_pub = _client_key(body.multisig_key)
        refund = Transaction.parse(body.tx)
        check_refund_request(refund, self.expiry)
        # Value 0: the amount is not known yet (the kinds with a pre-signed refund sign
        # legacy sighashes, which do not commit to it).
        draft = Contract(self.version, self.client_pub, self.key.pub.data, self.expiry,
                         refund.inputs[0].prevout, 0)
        self.refund_outpoint_txid = refund.inputs[0].prevout.txid
        self.state = ServerState.WAITING_FOR_CONTRACT
        return [Send(messages.return_refund(draft.sign_refund_as_server(self.key, refund)))]

    def _on_provide_contract(self, message: T) -> list[Effect]:
        body = message.provide_contract
        if not self.capabilities.presigned_refund:  # else the key came in PROVIDE_REFUND
            if not body.HasField("client_key"):
                raise RemoteProtocolError("PROVIDE_CONTRACT without client_key",
                                          ErrorCode.SYNTAX_ERROR)
            self.client_pub = _client_key(body.client_key)
        tx = Transaction.parse(body.tx)
        contract = contract_from_tx(self.version, tx, self.client_pub, self.key.pub.data,
                                    self.expiry)
        if self.capabilities.presigned_refund and tx.txid != self.refund_outpoint_txid:
            raise bad_tx("the contract is not the transaction the signed refund spends")
        if contract.value < self.policy.min_channel_size:
            raise RemoteProtocolError(
                f"the channel is too small: {contract.value} sat, below the minimum of "
                f"{self.policy.min_channel_size} sat; open a larger one ({VALUE_CODE_NOTE})",
                ErrorCode.CHANNEL_VALUE_TOO_LARGE,
                self.policy.min_channel_size)
        segwit_only = (self.capabilities.segwit_funding_required
                       or self.policy.require_segwit_funding)
        if segwit_only and any(txin.script_sig or not txin.witness for txin in tx.inputs):
            raise bad_tx("the contract must spend native segwit coins only, so its txid "
                         "cannot be malleated")
        initial = body.initial_payment  # min_payment bounds this one payment only
        paid = contract.value - initial.client_change_value
        if paid < self.policy.min_payment and initial.client_change_value:
            raise bad_tx(f"initial payment {paid} is below the minimum {self.policy.min_payment}")
        contract.check_payment(initial.client_change_value, initial.signature)
        self.record = ChannelRecord(Role.SERVER, contract, body.tx, self.key,
                                    initial.client_change_value, initial.signature,
                                    peer=self.peer, payments=1)
        self.state = ServerState.CHECKING_CONTRACT
        return [CheckContract(tx)]  # nothing is stored before the node would take it

    def _opened(self, record: ChannelRecord) -> list[Effect]:
        contract, tx = record.contract, Transaction.parse(record.contract_tx)
        paid = record.paid
        self.state, self.acked_change = ServerState.OPEN, record.change
        effects: list[Effect] = [
            StoreChannel(record), Broadcast(tx, Purpose.CONTRACT, contract.txid),
            ClaimChannel(contract.txid), PaymentReceived(record, paid, b""),  # no ack
            Send(messages.channel_open()), ChannelOpened(record, resumed=False)]
        if record.change == 0:  # the initial payment took everything: settle at once
            self.state = ServerState.SETTLING
            effects.append(PrepareSettlement(contract.txid))
        return effects

    def _on_update_payment(self, message: T) -> list[Effect]:
        body = message.update_payment
        change, signature, record = *self._on_contract(body), self._record()
        proven: list[Effect] = []
        if self.state is ServerState.RESUMED:
            self._check_resume_proof(record, body)
            proven = [ClaimChannel(record.channel_id), ChannelOpened(record, resumed=True)]
            self.state = ServerState.OPEN
        if change > record.change:
            raise bad_tx(f"payment would lower the server's value: change {change} is above "
                         f"the previous {record.change}")
        if change == record.change:
            if signature != record.signature:  # a re-sent payment must be the same one
                record.contract.check_payment(change, signature)
            return [*proven, Send(messages.payment_ack())]
        amount = record.change - change
        if amount < self.policy.min_increment and change:
            raise bad_tx(f"payment of {amount} is below the minimum increment "
                         f"{self.policy.min_increment}")
        record.contract.check_payment(change, signature)
        self.record = record = (
            record.with_payment(change, signature) if record.pending is None else
            self._paired_payment(record, change, signature, body.next_signature))
        # Its ack waits for the application's answer (payment_answered).
        effects: list[Effect] = [*proven, StorePayment(record, amount, body.info),
                                 PaymentReceived(record, amount, body.info)]
        self._unanswered.append(record.payments)
        if change == 0:
            self.state = ServerState.SETTLING
            effects.append(PrepareSettlement(record.channel_id))
        return effects

    def _check_resume_proof(self, record: ChannelRecord, body: pb.UpdatePayment) -> None:
        """With a resume challenge: a signature over it by the client's contract key.
        Without (v1/v2, what bitcoinj sends): a valid payment signature, which only the key's
        holder can make."""
        if not self.challenge:
            record.contract.check_payment(body.client_change_value, body.signature)
            return
        digest = resume_digest(self.challenge, record.channel_id)
        if not body.resume_proof or not record.contract.client_key.verify(digest,
                                                                          body.resume_proof):
            raise RemoteProtocolError("the first payment after a resume must carry a "
                                      "resume_proof signed by the channel's client key",
                                      ErrorCode.BAD_TRANSACTION)

    def _open(self) -> bool:
        return self.state is ServerState.OPEN

    def _closed(self) -> bool:
        return self.state is ServerState.CLOSED

    def _on_reanchor_message(self, message: T) -> list[Effect]:
        if self.state is not ServerState.OPEN:
            return self._refuse_reanchor(message)
        if message.type == T.REANCHOR_PROPOSE:
            return self._on_reanchor_propose(message)
        return self._on_reanchor_signed(message)

    def _on_close(self, message: T) -> list[Effect]:
        if self.state is ServerState.COSIGNING:
            return self._on_close_signature(message)
        if message.musig_nonce and self.capabilities.key_path_close:
            self._client_nonce = message.musig_nonce
        self.state = ServerState.SETTLING
        return [PrepareSettlement(self._record().channel_id)]

    # -- the cooperative key-path close ----------------------------------------------------

    def _propose_key_path(self, record: ChannelRecord, nonce: bytes, fee_rate: int,
                          payout_script: bytes) -> list[Effect]:
        """CLOSE with the unsigned key-path settlement (the fee from the server's share) and
        the server's public nonce only: its partial signature would let the client complete
        that settlement alone, so it never leaves the server (derived again, deterministic,
        once the client's arrives: no secret nonce is kept). None when the share cannot pay
        even that fee (then the payment leaf, a wallet input)."""
        contract = record.contract
        fee = contract.settlement_fee(record.change, payout_script, fee_rate, Branch.KEY_PATH)
        if record.paid - fee < DUST:
            return []
        tx = contract.settlement_draft(record.change, record.paid - fee, payout_script)
        try:
            server_nonce = contract.kind.server_close_nonce(record.key, nonce, tx)
        except MusigError as exc:
            return self._fall_back(record, fee_rate, payout_script,
                                   f"the client's MuSig2 nonce is unusable ({exc})")
        self._cosigning = Cosigning(tx, nonce, fee_rate, payout_script)
        self.state = ServerState.COSIGNING
        return [Send(messages.close(musig_nonce=server_nonce, musig_settlement=tx.serialize()))]

    def _on_close_signature(self, message: T) -> list[Effect]:
        """The client's partial signature: checked, the server's added, the key-path
        settlement stored (then broadcast and sent); else ERROR and the payment leaf."""
        session, self._cosigning, record = self._cosigning, None, self._record()
        assert session is not None, "COSIGNING holds its session"
        if message.musig_nonce:
            return self._fall_back(record, session.fee_rate, session.payout_script,
                                   "a second MuSig2 nonce in one session (a replayed nonce)")
        try:
            signed = record.contract.kind.complete_close(
                record.key, session.tx, session.client_nonce, message.musig_partial_signature)
        except MusigError as exc:
            why = ("CLOSE without the client's partial signature"
                   if not message.musig_partial_signature else
                   f"the client's partial signature does not verify ({exc})")
            return self._fall_back(record, session.fee_rate, session.payout_script, why)
        return self._settled(signed)

    def _fall_back(self, record: ChannelRecord, fee_rate: int, payout_script: bytes, why: str
                   ) -> list[Effect]:
        """ERROR saying why the key-path close failed, then the settlement through the
        payment leaf, which needs nothing more from the client."""
        explanation = f"{why}: the server settles through the payment leaf instead"
        return [Send(messages.error(ErrorCode.BAD_TRANSACTION, explanation)),
                PeerError(ErrorCode.BAD_TRANSACTION, explanation, remote=False),
                *self._settle_by_leaf(record, fee_rate, payout_script)]


@dataclass(frozen=True)
class Cosigning:
    """A key-path close awaiting the client's partial signature: the unsigned settlement,
    the client's nonce (the server's derives from it), and what settling by the leaf uses."""

    tx: Transaction
    client_nonce: bytes
    fee_rate: int
    payout_script: bytes


def _settlement_of(record: ChannelRecord) -> Transaction | None:
    """The settlement a CLOSING record holds (not a refund, which carries a lock time)."""
    if record.status is not ChannelStatus.CLOSING or not record.settlement_tx:
        return None
    tx = Transaction.parse(record.settlement_tx)
    return tx if tx.locktime == 0 else None


def _client_key(data: bytes) -> bytes:
    try:
        return PublicKey(data).data
    except DecodeError as exc:
        raise bad_tx(f"client key is not a canonical compressed public key: {exc}") from None


__all__ = ["ServerChannel", "ServerPolicy", "ServerState", "locking_script", "output_script"]
