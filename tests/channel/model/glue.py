"""The one place the model touches the machines' constructors and states.

When the machines' API changes (named constructors, one transition table each), only this
module follows it.
"""

from __future__ import annotations

from bitcoind_paychan.bitcoin.keys import PrivateKey
from bitcoind_paychan.channel.client import ClientChannel, ClientPolicy, ClientState
from bitcoind_paychan.channel.records import ChannelRecord
from bitcoind_paychan.channel.server import ServerChannel, ServerPolicy, ServerState

# Whether a resumed connection must prove it holds the client's key before it displaces the
# owner or gets a CLOSE honoured (issue 9 item 6). Off until the machines implement it.
RESUME_PROOF = False


def new_client(policy: ClientPolicy, key: PrivateKey, now: int, version: int,
               peer: str) -> ClientChannel:
    return ClientChannel(policy, key, now, version, peer=peer)


def resumed_client(policy: ClientPolicy, record: ChannelRecord, now: int,
                   peer: str) -> ClientChannel:
    return ClientChannel(policy, record.key, now, resume=record, peer=peer)


def new_server(policy: ServerPolicy, key: PrivateKey, now: int) -> ServerChannel:
    return ServerChannel(policy, key, now)


def server_for_settlement(policy: ServerPolicy, record: ChannelRecord,
                          now: int) -> ServerChannel:
    """A machine holding a stored open channel, ready to `settle` it (no connection)."""
    machine = ServerChannel(policy, record.key, now)
    machine.record, machine.state = record, ServerState.OPEN
    return machine


def client_can_pay(machine: ClientChannel) -> bool:
    return machine.state is ClientState.OPEN


def client_can_close(machine: ClientChannel) -> bool:
    return machine.state in (ClientState.OPEN, ClientState.WAITING_FOR_ACK)


def client_closed(machine: ClientChannel) -> bool:
    return machine.state is ClientState.CLOSED


def server_closed(machine: ServerChannel) -> bool:
    return machine.state is ServerState.CLOSED


def server_settling(machine: ServerChannel) -> bool:
    return machine.state is ServerState.SETTLING
