"""What the product pays in fees: one policy for every transaction it builds (cooperative
settlements, refunds, fee bumps), so one cap holds everywhere."""

from __future__ import annotations

from dataclasses import dataclass

from bitcoind_paychan.errors import PolicyError

MAX_FEE_TARGET = 1008  # estimatesmartfee's horizon, in blocks


@dataclass(frozen=True)
class FeePolicy:
    """The node's estimate for confirmation within `target` blocks, never below `min_rate`
    nor above `max_rate` (sat/vB, whole numbers as in bitcoind's settings)."""

    target: int = 6
    min_rate: int = 1
    max_rate: int = 200

    def __post_init__(self) -> None:
        if not 1 <= self.target <= MAX_FEE_TARGET:
            raise PolicyError("target", f"found {self.target}, expected an integer ≥ 1 and "
                                        f"≤ {MAX_FEE_TARGET} (blocks)")
        if self.min_rate < 1:
            raise PolicyError("min_rate", f"found {self.min_rate}, expected an integer ≥ 1 "
                                          "(sat/vB)")
        if self.max_rate < self.min_rate:
            raise PolicyError("max_rate", f"found {self.max_rate}, expected at least "
                                          f"min_rate ({self.min_rate}) sat/vB")

    @property
    def floor(self) -> int:
        """`min_rate` in sat/kvB, the unit of the node adapter's rates."""
        return self.min_rate * 1000

    @property
    def cap(self) -> int:
        """`max_rate` in sat/kvB."""
        return self.max_rate * 1000

    def rate(self, estimate: int) -> int:
        """The rate to pay (sat/kvB) given the node's `estimate` (sat/kvB): clamped into
        [floor, cap]. The cap wins: never pay more, whatever the estimate."""
        return min(max(estimate, self.floor), self.cap)


__all__ = ["MAX_FEE_TARGET", "FeePolicy"]


def reanchor_fees(vsize: int, payout_vbytes: int, fee_rate: int, pure_payout: bool
                  ) -> tuple[int, int]:
    """(client, server): who pays which part of a re-anchor's fee at `fee_rate` sat/kvB, the
    one rule (docs/design/reanchoring.md, 6). The server pays its payout output's
    `payout_vbytes`; a pure payout (no top-up, no renewal) is a partial settlement, and the
    server pays all of it, as it pays its settlements. Otherwise the client pays the rest (a
    renewal and a top-up are its funding, as a contract's is)."""
    total = -(-fee_rate * vsize // 1000)
    server = total if pure_payout else -(-fee_rate * payout_vbytes // 1000)
    return max(total - server, 0), server


REANCHOR_RATE_SLACK = 50  # percent a re-anchor's quoted rate may be above the client's own
# estimate (two nodes' estimates differ), plus one sat/vB (where both sit at the floor)


def reanchor_rate_ceiling(estimate: int, cap: int) -> int:
    """The highest rate (sat/kvB) a client signs a re-anchor at, given its own node's
    `estimate`: the estimate plus REANCHOR_RATE_SLACK percent and 1 sat/vB, never above its
    `cap` (`fees.max_rate`)."""
    return min(cap, estimate + estimate * REANCHOR_RATE_SLACK // 100 + 1000)
