"""How to reach a bitcoind: RPC URL, credentials, wallet and the chain it must be on."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bitcoind_paychan.errors import ConfigError, NodeAuthError

CHAINS = ("main", "test", "testnet4", "signet", "regtest")
DEFAULT_RPC_PORTS = {
    "main": 8332,
    "test": 18332,
    "testnet4": 48332,
    "signet": 38332,
    "regtest": 18443,
}


@dataclass(frozen=True)
class NodeConfig:
    """Connection settings for one bitcoind.

    Give either `cookie_file` (re-read after every auth failure, since bitcoind rewrites it on
    each start) or `user` and `password`. `chain` is what the node must be running.
    """

    url: str = "http://127.0.0.1:18443"
    chain: str = "regtest"
    wallet: str | None = None
    cookie_file: Path | None = None
    user: str | None = None
    password: str | None = None
    timeout: float = 60.0

    def __post_init__(self) -> None:
        if self.chain not in CHAINS:
            raise ConfigError(f"chain {self.chain!r} is not one of {', '.join(CHAINS)}")
        if self.cookie_file is None and (self.user is None or self.password is None):
            raise ConfigError("bitcoind credentials: give a cookie file, or both user and password")
        if not self.url.startswith(("http://", "https://")):
            raise ConfigError(f"bitcoind RPC URL {self.url!r} must start with http:// or https://")

    def credentials(self) -> tuple[str, str]:
        """(user, password), read from the cookie file when one is configured."""
        if self.cookie_file is None:
            assert self.user is not None and self.password is not None
            return self.user, self.password
        try:
            text = Path(self.cookie_file).read_text().strip()
        except OSError as exc:
            raise NodeAuthError(
                f"cannot read the bitcoind cookie file {self.cookie_file}: {exc.strerror}; is "
                "bitcoind running with this datadir, and may this user read it?"
            ) from exc
        user, sep, password = text.partition(":")
        if not sep:
            raise NodeAuthError(f"cookie file {self.cookie_file} does not hold user:password")
        return user, password

    @classmethod
    def for_datadir(
        cls,
        datadir: Path,
        chain: str = "regtest",
        rpc_port: int | None = None,
        wallet: str | None = None,
    ) -> NodeConfig:
        """Settings for a local node with cookie auth in `datadir`."""
        subdir = {"main": "", "test": "testnet3"}.get(chain, chain)
        port = rpc_port or DEFAULT_RPC_PORTS[chain]
        return cls(
            url=f"http://127.0.0.1:{port}",
            chain=chain,
            wallet=wallet,
            cookie_file=Path(datadir) / subdir / ".cookie",
        )
