"""What the client and server machines share: table-driven dispatch and refusing a peer."""

from __future__ import annotations

import enum
from collections.abc import Callable

from bitcoind_paychan.channel import messages
from bitcoind_paychan.channel.effects import Disconnect, Effect, PeerError, Send
from bitcoind_paychan.errors import DecodeError, ErrorCode, ProtocolError, RemoteProtocolError
from bitcoind_paychan.wire import error_code, pb, type_name

T = pb.TwoWayChannelMessage
Handler = Callable[[T], list[Effect]]


class ProtocolMachine:
    """A connection's state machine: `handlers[(state, message type)]` says what may come
    next; anything else is the peer's protocol error, answered with ERROR and a hang-up."""

    state: enum.Enum
    closed: enum.Enum
    peer_name: str
    handlers: dict[tuple[enum.Enum, int], Handler]

    def receive(self, message: T) -> list[Effect]:
        """Handle one message from the peer."""
        if self.state is self.closed:
            return []
        if message.type == T.ERROR:
            return self.on_error(message)
        handler = self.handlers.get((self.state, message.type))
        try:
            if handler is None:
                raise RemoteProtocolError(
                    f"unexpected {type_name(message)} while {self.state.value}",
                    ErrorCode.SYNTAX_ERROR)
            return handler(message)
        except DecodeError as exc:
            return self.refuse(RemoteProtocolError(str(exc), ErrorCode.BAD_TRANSACTION))
        except RemoteProtocolError as exc:
            return self.refuse(exc)

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
