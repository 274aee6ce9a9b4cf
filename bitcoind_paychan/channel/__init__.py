"""Level 1, the state machines (sans-IO): messages and inputs in, effects out. You carry out
every effect, in order: store (durably, before any later Send), send, fund, check, broadcast.

    server = ServerChannel(ServerPolicy(), PrivateKey.generate(), now=int(time.time()))
    for effect in server.receive(message):      # a TwoWayChannelMessage from the client
        ...                                     # Send, StoreChannel, StorePayment, Broadcast…

The README's level 1 example drives a client and a server against each other. What each
effect asks and how to answer it: `effects.py`; each machine's transitions: its TABLE.
"""

from bitcoind_paychan.bitcoin.keys import PrivateKey
from bitcoind_paychan.channel.client import ClientChannel, ClientPolicy, ClientState
from bitcoind_paychan.channel.effects import (
    Broadcast,
    ChannelClosed,
    ChannelFinished,
    ChannelOpened,
    CheckContract,
    ClaimChannel,
    ClosingSeen,
    Disconnect,
    Effect,
    FundContract,
    FundSettlement,
    LoadChannel,
    PaymentAcknowledged,
    PaymentReceived,
    PeerError,
    PrepareSettlement,
    ResumeRefused,
    Send,
    StoreChannel,
    StorePayment,
    VersionRefused,
)
from bitcoind_paychan.channel.records import ChannelRecord, ChannelStatus, Role
from bitcoind_paychan.channel.server import ServerChannel, ServerPolicy, ServerState

__all__ = [
    "Broadcast", "ChannelClosed", "ChannelFinished", "ChannelOpened", "ChannelRecord",
    "ChannelStatus", "CheckContract", "ClaimChannel", "ClientChannel", "ClientPolicy",
    "ClientState", "ClosingSeen", "Disconnect", "Effect", "FundContract", "FundSettlement",
    "LoadChannel", "PaymentAcknowledged", "PaymentReceived", "PeerError", "PrepareSettlement",
    "PrivateKey", "ResumeRefused", "Role", "Send", "ServerChannel", "ServerPolicy",
    "ServerState", "StoreChannel", "StorePayment", "VersionRefused",
]
