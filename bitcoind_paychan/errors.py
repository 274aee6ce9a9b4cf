"""The one exception hierarchy of bitcoind-paychan.

Every error says what happened and, where there is something to do, what to do.

    PaychanError
    ├── ConfigError              bad configuration (names file, key, expectation)
    │   └── PolicyError          a policy's value breaks its rule (names the field)
    ├── DecodeError              malformed bytes: a transaction, script, signature, frame
    ├── MusigError               a MuSig2 (BIP327) input cannot be used (a tweak, a key, a nonce)
    │   ├── InvalidContribution  a signer's key, nonce or partial signature is invalid (who, what)
    │   └── NonceReused          a secret nonce was offered a second time
    ├── NodeError                talking to bitcoind
    │   ├── RpcError             the node answered an error (its code and message)
    │   ├── NodeUnreachable
    │   ├── NodeAuthError
    │   ├── WrongNetwork
    │   ├── WalletNotLoaded
    │   ├── InsufficientFunds
    │   └── TransactionRejected
    ├── ProtocolError            the channel protocol
    │   ├── LocalProtocolError   we (or the application) broke the rules
    │   │   ├── ChannelExists    a channel to that server is open already, of another value
    │   │   ├── InvalidParameter a request's parameter is malformed (an address, a date)
    │   │   └── NotStarted       a manager used before `start()` (nothing watches the chain)
    │   └── RemoteProtocolError  the peer broke the rules; carries the wire error code
    ├── ChannelFailed            a channel could not be opened or used (says what happens next)
    │   ├── ChannelGone          the server no longer has it open: open a new one
    │   └── PaymentTimeout       no PAYMENT_ACK in time; the payment is stored, resume to resend
    ├── StoreError               the durable store
    │   ├── LeaseLost            another connection (or instance) took the channel over
    │   └── SettlementDecided    the channel is settling: no payment stored after that
    ├── ProxyHeaderError         a trusted balancer's connection without a valid PROXY header
    ├── TLSError                 a TLS handshake or certificate check failed
    ├── SystemChangeRefused      the demo would change this machine and was not asked to
    └── ControlError             a `paychan <command>` call to the daemon failed (its code)

Only three exceptions are defined elsewhere, each beside its one user because it never
leaves it: the CLI's UsageError (a bad command line, printed with its usage), the config
reader's Problem (one key's problem, gathered into one ConfigError) and the block monitor's
_MissingHeader (a header gone during a reorg walk: the walk is retried). tests/test_errors.py
holds it.
"""

from __future__ import annotations

import enum


class PaychanError(Exception):
    """Base of every error raised by bitcoind-paychan."""


class ConfigError(PaychanError):
    """The configuration is wrong; the message names the file, the key and what was expected."""


class PolicyError(ConfigError):
    """A policy object got a value it cannot work with; `field` names it, and the message
    says what was found and what was expected (the configuration adds the key path)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.detail = message


class DecodeError(PaychanError, ValueError):
    """Bytes that should hold a transaction, script, key, signature or message do not."""


class MusigError(PaychanError, ValueError):
    """A MuSig2 (BIP327) input cannot be used: a tweak out of range, a signer's key missing
    from the key list, a secret key that does not match its nonce. Nothing was signed."""


class InvalidContribution(MusigError):
    """A participant sent an invalid MuSig2 contribution: `contrib` names it ("pubkey",
    "pubnonce", "aggnonce", "aggothernonce" or "psig") and `signer` the index of the signer
    who sent it (None for the nonce aggregator). Hold that party accountable: abort the
    session and sign nothing more in it."""

    def __init__(self, signer: int | None, contrib: str, message: str = "") -> None:
        who = "the nonce aggregator" if signer is None else f"signer {signer}"
        super().__init__(message or f"{who} sent an invalid {contrib}: abort this MuSig2 "
                                    "session and hold that party accountable")
        self.signer = signer
        self.contrib = contrib


class NonceReused(MusigError):
    """A MuSig2 secret nonce was offered to sign a second time (or after it was discarded).
    Signing twice with one nonce reveals the secret key, so nothing was signed: start a new
    session with a fresh nonce_gen."""


class NodeError(PaychanError):
    """bitcoind could not do what was asked."""


class NodeUnreachable(NodeError):
    """bitcoind does not answer at the configured RPC address."""


class NodeAuthError(NodeError):
    """bitcoind refused the RPC credentials (cookie or user/password)."""


class WrongNetwork(NodeError):
    """bitcoind runs a different chain from the one configured."""


class WalletNotLoaded(NodeError):
    """The configured wallet does not exist or is not loaded in bitcoind."""


class RpcError(NodeError):
    """bitcoind answered with an error; `code` and `rpc_message` are the node's."""

    def __init__(self, method: str, code: int, message: str) -> None:
        super().__init__(f"bitcoind {method} failed ({code}): {message}")
        self.method = method
        self.code = code
        self.rpc_message = message


class InsufficientFunds(NodeError):
    """The wallet cannot fund what was asked."""


class TransactionRejected(NodeError):
    """bitcoind refused a transaction; `reason` holds the node's own words."""

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason


class ErrorCode(enum.IntEnum):
    """The wire error codes of bitcoinj's payment channel protocol."""

    TIMEOUT = 1
    SYNTAX_ERROR = 2
    NO_ACCEPTABLE_VERSION = 3
    BAD_TRANSACTION = 4
    TIME_WINDOW_UNACCEPTABLE = 5
    CHANNEL_VALUE_TOO_LARGE = 6
    MIN_PAYMENT_TOO_LARGE = 7
    OTHER = 8


class ProtocolError(PaychanError):
    """The channel protocol was broken; `code` is the wire error code that describes it."""

    def __init__(
        self, message: str, code: ErrorCode = ErrorCode.OTHER, expected_value: int | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.expected_value = expected_value


class LocalProtocolError(ProtocolError):
    """We were asked to do something the protocol does not allow in this state."""


class InvalidParameter(LocalProtocolError):
    """A request's parameter is malformed (a server address, a date): nothing was done; the
    message names the parameter and the form expected. The CLI exits with status 2 (usage)."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol does not allow; we answer with ERROR `code`."""


class ChannelExists(LocalProtocolError):
    """A channel to that server is open already, with another value: pay through it, close
    it, or open another beside it (`new=True`)."""


class NotStarted(LocalProtocolError):
    """A channel manager was asked to take a channel before `await manager.start()`: nothing
    would watch the chain, so a channel its client never closes would not be settled before
    its expiry (and the client's refund would take back every payment)."""


class ChannelFailed(PaychanError):
    """The channel could not be opened or used; the message says why and what happens next."""


class ChannelGone(ChannelFailed):
    """The server no longer has the channel open (closed, settled, used up or forgotten); the
    chain tells how it ends. Open a new channel to pay."""


class PaymentTimeout(ChannelFailed):
    """No PAYMENT_ACK arrived within the payment's timeout. The payment is stored (it may have
    been received): the connection is closed, and resuming the channel sends it again."""


class ReanchorRefused(PaychanError):
    """A re-anchor did not happen (declined by us, refused by the server or its node); the
    channel goes on, on its contract, and may be re-anchored again."""


class StoreError(PaychanError):
    """The durable store failed; nothing was acknowledged that was not stored."""


class CreditLost(StoreError):
    """A take of a channel's credit the gateway decided at once (its store is its alone)
    found less credit in the store when it was made durable: nothing was taken and what the
    request bought was not released. A bug to report; the store decides the channel's next
    take, so the client may simply retry."""


class LeaseLost(StoreError):
    """A payment was not stored because its connection no longer holds the channel's lease:
    the client resumed on another connection or instance (or the channel is being settled),
    whose fencing token is newer. Nothing was acknowledged; this connection must end."""


class SettlementDecided(StoreError):
    """A payment (or a second settlement) was not stored because the channel is no longer
    open: its settlement was decided (stored CLOSING) by another connection or instance.
    Nothing was acknowledged; the stored settlement is the channel's one."""


class ProxyHeaderError(PaychanError):
    """A connection from a trusted proxy did not begin with a valid PROXY protocol header
    (missing, malformed, too long, cut short or late): it is refused before anything else is
    read. The message says what was wrong; check the balancer's send-proxy/proxy_protocol."""


class PaidHttpError(PaychanError):
    """A message of the channel protocol over HTTP cannot be read: a Payment credential or
    receipt, an offer, or a body of frames (transport/paidhttp). The message says which part
    and what was expected; nothing it carried was acted on."""


class PriceRefused(PaychanError):
    """A paying client refused a payment over its caps (per request, or in all): nothing was
    signed nor sent. The message says the price, the cap and which option raises it."""


class UpstreamFailed(PaychanError):
    """The gateway's upstream could not be reached (502), did not answer in time (504), or
    broke off or mangled its answer (502). Never charged: what the request held goes back to
    its channel's credit. The message names the route; check the upstream."""

    def __init__(self, status: int, why: str) -> None:
        super().__init__(why)
        self.status = status


class TLSError(PaychanError):
    """A TLS connection failed: a certificate not trusted, expired, for another host or not
    the pinned one, or a peer that does not speak TLS. The message says which and what to do."""


class SystemChangeRefused(PaychanError):
    """`paychan demo` would change this machine (install a package, create a system user)
    and the operator did not allow it; the message names each change and the option that
    allows them. Nothing was changed."""


class ControlError(PaychanError):
    """A call to the daemon's control API failed (`paychan <command>`); `code` is the daemon's
    JSON-RPC code, or a local one when no answer came (daemon/rpcclient.py names them)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
