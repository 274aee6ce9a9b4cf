"""What the hot path's metric updates cost: each payment counts, adds its amount, observes
its latency (prometheus-client children bound once) and feeds the dashboard's activity.

Usage: python bench/metrics_hot_path.py [--updates N] [--json]   (prints figures, then one
JSON object last; --json is accepted for symmetry with the other benches)
"""

from __future__ import annotations

import argparse
import json
import timeit
from collections.abc import Callable

from bitcoind_paychan.daemon.activity import Activity
from bitcoind_paychan.daemon.metrics import PaychanMetrics

BUDGET_NS = 2_000  # per update


def per_call_ns(action: Callable[[], object], updates: int) -> float:
    """The best of five runs of `updates` calls, in nanoseconds per call."""
    return min(timeit.repeat(action, number=updates, repeat=5)) / updates * 1e9


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--updates", type=int, default=200_000)
    parser.add_argument("--json", action="store_true", help="(the JSON is always printed last)")
    args = parser.parse_args()
    metrics = PaychanMetrics("regtest")
    activity = Activity()
    server = metrics.server
    figures = {
        "counter_inc": per_call_ns(server.payments.inc, args.updates),
        "counter_add_amount": per_call_ns(lambda: server.amounts.inc(1000), args.updates),
        "histogram_observe": per_call_ns(lambda: server.latency.observe(0.003), args.updates),
        "activity_record": per_call_ns(lambda: activity.record(1000, received=True),
                                       args.updates),
        "labels_lookup_then_inc (not on the hot path)": per_call_ns(
            lambda: metrics.payments.labels(role="server").inc(), args.updates),
    }
    hot = {k: v for k, v in figures.items() if "not on the hot path" not in k}
    per_payment = sum(hot.values())
    for name, ns in figures.items():
        print(f"{name:48} {ns:8.0f} ns")
    print(f"{'one payment (all four updates)':48} {per_payment:8.0f} ns")
    worst = max(hot.values())
    print(f"worst hot-path update {worst:.0f} ns; budget {BUDGET_NS} ns each: "
          f"{'ok' if worst < BUDGET_NS else 'OVER'}")
    print(json.dumps({"updates": args.updates, "ns_per_update": {k: round(v) for k, v in
                                                                  figures.items()},
                      "ns_per_payment": round(per_payment), "worst_hot_update_ns": round(worst),
                      "budget_ns": BUDGET_NS, "within_budget": worst < BUDGET_NS}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
