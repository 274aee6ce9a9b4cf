"""Per-peer limits: connection rate and concurrent handshakes, counted per address."""

from __future__ import annotations

import logging

import pytest

from bitcoind_paychan.errors import PolicyError
from bitcoind_paychan.transport.limits import PeerGate, PeerLimits, peer_key


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_up_to_the_rate_then_refill_over_time() -> None:
    clock = Clock()
    gate = PeerGate(PeerLimits(max_connections_per_minute=60, max_handshakes_per_ip=1000), clock)
    admitted = [gate.admit("10.0.0.1") for _ in range(61)]
    assert all(admitted[:60]) and admitted[60] is None
    assert gate.admit("10.0.0.2") is not None  # another address has its own budget
    clock.now += 2.0  # 60 a minute: two more
    assert gate.admit("10.0.0.1") and gate.admit("10.0.0.1")
    assert gate.admit("10.0.0.1") is None


def test_concurrent_handshakes_are_capped_until_one_ends() -> None:
    gate = PeerGate(PeerLimits(max_handshakes_per_ip=2), Clock())
    first, second = gate.admit("10.0.0.1"), gate.admit("10.0.0.1")
    assert first and second and gate.admit("10.0.0.1") is None
    first.release()
    first.release()  # once only
    third = gate.admit("10.0.0.1")
    assert third is not None and gate.admit("10.0.0.1") is None


def test_refusals_log_one_line_per_peer_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    gate = PeerGate(PeerLimits(max_connections_per_minute=1, log_interval=60), clock)
    with caplog.at_level(logging.WARNING, "bitcoind_paychan.transport.limits"):
        for _ in range(1000):
            gate.admit("10.0.0.1")
            gate.admit("10.0.0.2")
        clock.now += 61
        for _ in range(10):
            gate.admit("10.0.0.1")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3, lines
    assert "10.0.0.1" in lines[0] and "more than 1 connections a minute" in lines[0]
    assert "(999 refused since the last such line)" in lines[2]


def test_ipv6_peers_count_per_64_and_mapped_ipv4_as_ipv4() -> None:
    assert peer_key("2001:db8:1:2:aaaa::1") == peer_key("2001:db8:1:2:bbbb::9") == (
        "2001:db8:1:2::/64")
    assert peer_key("::ffff:10.0.0.1") == "10.0.0.1"
    assert peer_key("not an address") == "not an address"
    gate = PeerGate(PeerLimits(max_handshakes_per_ip=1), Clock())
    assert gate.admit("2001:db8::1") and gate.admit("2001:db8::2") is None


def test_idle_peers_are_forgotten_so_the_table_stays_bounded() -> None:
    clock = Clock()
    gate = PeerGate(PeerLimits(), clock)
    for n in range(5000):
        admission = gate.admit(f"10.{n // 65536}.{n // 256 % 256}.{n % 256}")
        assert admission is not None
        admission.release()
        clock.now += 0.1
    assert gate.peers < 2100


@pytest.mark.parametrize("limits", [{"max_connections_per_minute": 0},
                                    {"max_handshakes_per_ip": 0}, {"max_contract_checks": 0},
                                    {"log_interval": 0}])
def test_limits_are_validated(limits: dict[str, int]) -> None:
    with pytest.raises(PolicyError):
        PeerLimits(**limits)
