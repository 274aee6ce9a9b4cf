"""The one place the model touches the machines' constructors and states.

When the machines' API changes (named constructors, one transition table each), only this
module follows it.
"""

from __future__ import annotations

from bitcoind_paychan.bitcoin.keys import PrivateKey
from bitcoind_paychan.bitcoin.musig2 import SecretNonce
from bitcoind_paychan.channel.client import ClientChannel, ClientPolicy, ClientState
from bitcoind_paychan.channel.records import ChannelRecord
from bitcoind_paychan.channel.server import ServerChannel, ServerPolicy, ServerState

# Whether a resumed connection must prove it holds the client's key before it displaces the
# owner or gets a CLOSE honoured (the machines do: v1/v2 by a payment signature, v3 by signing
# the server's challenge).
RESUME_PROOF = True


def new_client(policy: ClientPolicy, key: PrivateKey, now: int, version: int,
               peer: str) -> ClientChannel:
    return ClientChannel(policy, key, now, version, peer=peer)


def resumed_client(policy: ClientPolicy, record: ChannelRecord, now: int) -> ClientChannel:
    return ClientChannel.resuming(record, policy, now)


def new_server(policy: ServerPolicy, key: PrivateKey, now: int) -> ServerChannel:
    return ServerChannel(policy, key, now)


def server_for_settlement(policy: ServerPolicy, record: ChannelRecord,
                          now: int) -> ServerChannel:
    """A machine holding a stored open channel, ready to `settle` it (no connection)."""
    return ServerChannel.resumed_from(policy, record, now)


def client_can_pay(machine: ClientChannel) -> bool:
    return machine.state is ClientState.OPEN


def client_opened(machine: ClientChannel) -> bool:
    """Whether CHANNEL_OPEN arrived on this connection."""
    return machine.opened


def server_closed(machine: ServerChannel) -> bool:
    return machine.state is ServerState.CLOSED


def server_settling(machine: ServerChannel) -> bool:
    return machine.state is ServerState.SETTLING


def server_resumed(machine: ServerChannel) -> bool:
    """A resume loaded, its proof not taken yet."""
    return machine.state is ServerState.RESUMED


def client_close_session(machine: ClientChannel) -> tuple[SecretNonce | None, bytes]:
    """The client's MuSig2 nonce of its CLOSE (secret, public): None before a key-path close
    or once spent."""
    return machine._secnonce, machine._nonce
