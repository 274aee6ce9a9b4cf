"""What the client and server machines share: one transition table per machine, dispatch
through it, and refusing a peer.

In the manner of h11's `_state.py`: a machine's `TABLE` maps (state, event) to the states it
may move to. An event is a peer message type (an int from the wire enum) or an application
input (`Input`). A (state, event) pair missing from the table is the peer's protocol error
(answered with ERROR and a hang-up) for a message, or a `LocalProtocolError` for an input.
The handler runs only for listed pairs and may pick any listed next state; a move it was not
allowed is a bug and raises. Two rows hold in every state but the closed one and are not
spelled out per machine: ERROR from the peer, and `CONNECTION_LOST`, both lead to closed.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from bitcoind_paychan.bitcoin.hashes import sha256
from bitcoind_paychan.channel import messages
from bitcoind_paychan.channel.effects import Disconnect, Effect, PeerError, Send
from bitcoind_paychan.errors import (
    DecodeError,
    ErrorCode,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
)
from bitcoind_paychan.wire import error_code, pb, type_name

T = pb.TwoWayChannelMessage
# bitcoinj's name for the code says the server's minimum is too large for the client's value:
# both sides refuse a channel too small with it, and say so in words.
VALUE_CODE_NOTE = ("wire code CHANNEL_VALUE_TOO_LARGE: bitcoinj's code for a channel value "
                   "the other side does not accept")
Handler = Callable[[T], list[Effect]]


class FastEnum(enum.Enum):
    """An Enum hashed by identity (its members are singletons), in C: Enum's own __hash__ is
    Python code, and every transition looks up (state, event) in its table."""

    __hash__ = object.__hash__


class Input(FastEnum):
    """Application inputs and adapters' answers, as events of the transition tables."""

    START = "start"  # client: say hello (open or resume)
    CONTRACT_FUNDED = "contract_funded"  # client: the answer to FundContract
    PAY = "pay"  # client
    CLOSE = "close"  # client: the application asks to close
    SETTLEMENT_SEEN = "settlement_seen"  # client: a settlement of ours found on the node
    ABANDON = "abandon"  # client: give up a contract the server never opened (coins unspent)
    CHANNEL_LOADED = "channel_loaded"  # server: the answer to LoadChannel
    CONTRACT_CHECKED = "contract_checked"  # server: the answer to CheckContract
    SETTLE = "settle"  # server: the answer to PrepareSettlement, or the application's close
    SETTLE_FUNDED = "settle_funded"  # server: the answer to FundSettlement
    SETTLEMENT_DECIDED = "settlement_decided"  # server: the channel was found CLOSING
    PAYMENT_ANSWERED = "payment_answered"  # server: the application's answer to PaymentReceived
    REANCHOR = "reanchor"  # client: the application asks for a top-up or a renewal
    REANCHOR_FUNDED = "reanchor_funded"  # client: the answer to FundReanchor
    REANCHOR_QUOTE = "reanchor_quote"  # server: the answer to PrepareReanchor, or the
    # application's own quote (a payout or a renewal it wants)
    REANCHOR_CHECKED = "reanchor_checked"  # server: the answer to CheckReanchor
    REANCHOR_CONFIRMED = "reanchor_confirmed"  # both: R confirmed, the channel promoted
    CONNECTION_LOST = "connection_lost"


Event = int | Input
Table = Mapping[tuple[enum.Enum, Event], frozenset[Any]]


def table(rows: Mapping[tuple[enum.Enum, Event], Iterable[enum.Enum]],
          states: type[enum.Enum], closed: enum.Enum) -> dict[tuple[enum.Enum, Event],
                                                              frozenset[Any]]:
    """A transition table from `rows`, plus connection lost (any state → closed)."""
    built = {key: frozenset(nexts) for key, nexts in rows.items()}
    for state in states:
        built.setdefault((state, Input.CONNECTION_LOST), frozenset({closed}))
    return built


def event_name(event: Event) -> str:
    return event.value if isinstance(event, Input) else pb.TwoWayChannelMessage.MessageType.Name(
        event)  # type: ignore[arg-type]


class ProtocolMachine:
    """A connection's state machine driven through its class's `TABLE`."""

    TABLE: Table
    state: enum.Enum
    closed: enum.Enum
    peer_name: str
    handlers: dict[int, Handler]  # message type → handler
    now: int  # the time of the latest input that gave one (its construction's at first)

    def receive(self, message: T, now: int | None = None) -> list[Effect]:
        """Handle one message from the peer, received at `now` (the service's clock: every
        check of a time against an expiry uses it; None keeps the last time given)."""
        if now is not None:
            self.now = now
        if self.state is self.closed:
            return []
        if message.type == T.ERROR:
            return self.on_error(message)
        try:
            allowed = self.TABLE.get((self.state, message.type))
            if allowed is None:
                raise RemoteProtocolError(
                    f"unexpected {type_name(message)} while {self.state.value}",
                    ErrorCode.SYNTAX_ERROR)
            return self._step(message.type, self.handlers[message.type], allowed, message)
        except DecodeError as exc:
            return self.refuse(RemoteProtocolError(str(exc), ErrorCode.BAD_TRANSACTION))
        except RemoteProtocolError as exc:
            return self.refuse(exc)

    def _input(self, event: Input, handler: Callable[..., list[Effect]], *args: Any
               ) -> list[Effect]:
        """Apply an application input, if the table allows it in this state."""
        allowed = self.TABLE.get((self.state, event))
        if allowed is None:
            raise LocalProtocolError(f"cannot {event.value.replace('_', ' ')} while "
                                     f"{self.state.value}")
        return self._step(event, handler, allowed, *args)

    def _step(self, event: Event, handler: Callable[..., list[Effect]],
              allowed: frozenset[Any], *args: Any) -> list[Effect]:
        before = self.state
        effects = handler(*args)
        if self.state not in allowed and self.state is not self.closed:
            raise LocalProtocolError(f"bug: {event_name(event)} moved {before.name} to "
                                     f"{self.state.name}, which the table does not allow")
        return effects

    def connection_lost(self) -> list[Effect]:
        """The connection ended (EOF, reset, or we hung up)."""
        return self._input(Input.CONNECTION_LOST, self._on_connection_lost)

    def _on_connection_lost(self) -> list[Effect]:
        self.state = self.closed
        return []

    def on_error(self, message: T) -> list[Effect]:
        """The peer sent ERROR: the connection is over."""
        code, text = error_code(message.error), message.error.explanation
        self.state = self.closed
        return [PeerError(code, text, remote=True),
                Disconnect(f"{self.peer_name} sent ERROR {code.name}: {text}")]

    def refuse(self, exc: ProtocolError) -> list[Effect]:
        """Tell the peer what it did wrong, then hang up."""
        self.state = self.closed
        return [Send(messages.error(exc.code, str(exc), exc.expected_value)),
                PeerError(exc.code, str(exc), remote=False),
                Disconnect(f"refused the {self.peer_name}: {exc}", exc.code)]


def resume_challenge(connection_secret: bytes) -> bytes:
    """The v3 server's challenge to a resuming client: unpredictable to anyone without this
    connection's fresh key."""
    return sha256(b"bitcoind-paychan resume challenge" + connection_secret)


def resume_digest(challenge: bytes, contract_txid: str) -> bytes:
    """What a v3 client signs with its contract key to prove a resumed channel is its own."""
    return sha256(b"bitcoind-paychan resume proof" + challenge + bytes.fromhex(contract_txid))
