"""Free TCP ports on 127.0.0.1 that stay free until used (standard library only).

A port the kernel hands out for bind(0) lies in its ephemeral range, from which it also picks
the local port of every outgoing connection: one RPC call can take such a port between the
moment it is chosen and the moment a server binds it. These ports are chosen below that range,
where nothing is handed out on its own, and are checked to be free.

    python3 regtest/ports.py 3      # prints three distinct free ports on one line
"""

from __future__ import annotations

import contextlib
import random
import socket
import sys
from pathlib import Path

EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_given: set[int] = set()  # handed out by this process: never twice (it may not be bound yet)


def ephemeral_start() -> int:
    """The first port of the kernel's ephemeral range (Linux's default: 32768)."""
    try:
        return int(EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now and that no outgoing
    connection will take."""
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """`count` distinct free ports below the ephemeral range (each held until all are chosen),
    none handed out before by this process."""
    start = ephemeral_start()
    ports: list[int] = []
    with contextlib.ExitStack() as stack:
        for _ in range(1000):
            port = random.randrange(max(1024, start // 2), start)
            if port in _given:
                continue
            sock = stack.enter_context(socket.socket())
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:  # in use (or just chosen)
                continue
            ports.append(port)
            if len(ports) == count:
                _given.update(ports)
                return ports
    raise OSError(f"found no {count} free ports below {start}, the ephemeral range")


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not argv[0].isdigit() or int(argv[0]) < 1:
        print("usage: python3 regtest/ports.py COUNT", file=sys.stderr)
        return 2
    print(*free_ports(int(argv[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
