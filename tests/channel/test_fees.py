"""The one fee policy: target, floor and cap, in sat/vB; rates clamp into [floor, cap]."""

from __future__ import annotations

import pytest

from bitcoind_paychan.channel.fees import FeePolicy
from bitcoind_paychan.errors import ConfigError, PolicyError


def test_rate_clamps_the_estimate_between_floor_and_cap() -> None:
    policy = FeePolicy(target=3, min_rate=2, max_rate=50)
    assert (policy.floor, policy.cap) == (2_000, 50_000)
    assert policy.rate(1_000) == 2_000  # below the floor
    assert policy.rate(7_500) == 7_500
    assert policy.rate(900_000) == 50_000  # the cap wins, whatever the estimate


def test_defaults() -> None:
    assert FeePolicy() == FeePolicy(target=6, min_rate=1, max_rate=200)


@pytest.mark.parametrize(("options", "field", "expected"), [
    ({"target": 0}, "target", "≥ 1 and ≤ 1008"),
    ({"target": 1009}, "target", "≤ 1008"),
    ({"min_rate": 0}, "min_rate", "≥ 1"),
    ({"min_rate": 10, "max_rate": 5}, "max_rate", "at least min_rate (10)"),
])
def test_refuses_values_it_cannot_work_with(options: dict[str, int], field: str,
                                            expected: str) -> None:
    with pytest.raises(PolicyError) as refused:
        FeePolicy(**options)
    assert refused.value.field == field and expected in str(refused.value)
    assert isinstance(refused.value, ConfigError)
