"""The service tests' two sides (a server and a client beside regtest nodes, or on the
in-process chain)."""

from tests.service.conftest import mem_sides, sides

__all__ = ["mem_sides", "sides"]
