"""The service tests' two sides (a server and a client beside regtest nodes)."""

from tests.service.conftest import sides

__all__ = ["sides"]
