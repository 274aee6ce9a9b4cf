"""Free ports for nodes and daemons: below the kernel's ephemeral range, so that no outgoing
connection takes one between choosing it and binding it."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from regtest.ports import ephemeral_start, free_port, free_ports

ROOT = Path(__file__).resolve().parents[2]


def test_free_ports_are_distinct_bindable_and_below_the_ephemeral_range() -> None:
    ports = free_ports(20)
    assert len(set(ports)) == 20
    assert all(1024 <= port < ephemeral_start() for port in ports)
    for port in ports:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))
    assert free_port() < ephemeral_start()


def test_outgoing_connections_do_not_take_them() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", free_port()))
        server.listen()
        with socket.create_connection(server.getsockname()) as client:
            assert client.getsockname()[1] >= ephemeral_start()  # the kernel's own range


def test_the_script_needs_only_the_standard_library() -> None:
    done = subprocess.run([sys.executable, "-S", "-I", str(ROOT / "regtest" / "ports.py"), "3"],
                          capture_output=True, text=True, timeout=30, check=True)
    assert len({int(port) for port in done.stdout.split()}) == 3


def test_separate_calls_never_hand_out_a_port_twice() -> None:
    """Seen: a daemon test chose its control and metrics ports with two calls, got the same
    one (neither was bound yet) and the daemon refused its config."""
    ports = [free_port() for _ in range(2_000)]
    assert len(set(ports)) == len(ports)
