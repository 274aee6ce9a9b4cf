"""Transports: how frames reach a peer. `base` holds what the channel managers need of a
connection (Link, Stream) and CarriedStream (frames the application carries itself); `tcp`
and `websocket` are the two the library brings; `tls` adds optional TLS to both."""

from bitcoind_paychan.transport.base import CarriedStream, Link, Stream, decode, encode

__all__ = ["CarriedStream", "Link", "Stream", "decode", "encode"]
