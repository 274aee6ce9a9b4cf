"""The benchmarks still run and print their JSON (their figures are not asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_json(*args: str) -> dict[str, object]:
    done = subprocess.run([sys.executable, *args, "--json"], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_throughput_reports_its_figures() -> None:
    result = run_json("bench/throughput.py", "--channels", "2", "--payments", "5")
    for key in ("payments_per_s", "p50_ms", "p99_ms", "server_rss_mb", "client_rss_mb"):
        value = result[key]
        assert isinstance(value, int | float) and value > 0, key
    assert result["channels"] == 2 and result["payments"] == 5
    for key in ("fsync_ms", "verify_per_s", "rate_over_verify", "server_cpu_us",
                "ecdsa_sign_per_s", "schnorr_sign_per_s"):
        assert isinstance(result[key], int | float) and result[key] > 0, key  # type: ignore


def test_throughput_of_versions_3_and_4_in_one_run() -> None:
    result = run_json("bench/throughput.py", "--version", "3", "4", "--payments", "5")
    runs = result["runs"]
    assert isinstance(runs, list) and [r["version"] for r in runs] == [3, 4]
    for r in runs:
        assert r["server_logged"] == 5 and r["schnorr_verify_per_s"] > 0
        assert r["ecdsa_verify_per_s"] > 0
    # Each version's ratio is to the rate of the scheme its payments are signed with.
    assert runs[0]["verify_per_s"] == runs[0]["ecdsa_verify_per_s"]
    assert runs[1]["verify_per_s"] == runs[1]["schnorr_verify_per_s"]


def test_throughput_with_a_window_and_in_server_capacity_mode() -> None:
    piped = run_json("bench/throughput.py", "--channels", "1", "--payments", "40",
                     "--window", "8")
    assert piped["window"] == 8 and piped["server_logged"] == 40
    capacity = run_json("bench/throughput.py", "--channels", "2", "--payments", "30",
                        "--window", "4", "--capacity", "--uvloop")
    assert capacity["mode"] == "capacity" and capacity["server_logged"] == 60
    assert capacity["event_loop"] == "uvloop"
    for key in ("server_cpu_us", "server_payments_per_commit"):
        assert isinstance(capacity[key], float) and capacity[key] > 0, key  # type: ignore


def test_throughput_over_tls_on_tcp_and_websocket() -> None:
    for transport in ("tcp", "ws"):
        result = run_json("bench/throughput.py", "--channels", "1", "--payments", "20",
                          "--window", "4", "--tls", "--transport", transport)
        assert result["tls"] is True and result["server_logged"] == 20, transport


def test_throughput_over_tls_on_uvloop() -> None:
    for transport in ("tcp", "ws"):
        result = run_json("bench/throughput.py", "--channels", "2", "--payments", "20",
                          "--window", "4", "--tls", "--uvloop", "--transport", transport)
        assert (result["tls"], result["event_loop"]) == (True, "uvloop"), transport
        assert result["server_logged"] == 40, transport


def test_throughput_on_uvloop() -> None:
    result = run_json("bench/throughput.py", "--channels", "1", "--payments", "20",
                      "--window", "4", "--uvloop")
    assert result["event_loop"] == "uvloop" and result["server_logged"] == 20


def test_throughput_over_websocket() -> None:
    result = run_json("bench/throughput.py", "--channels", "2", "--payments", "20",
                      "--window", "4", "--transport", "ws")
    assert result["transport"] == "ws" and result["server_logged"] == 40
    assert isinstance(result["payments_per_s"], float) and result["payments_per_s"] > 0


def test_hot_path_bench_reports_each_part_with_a_window() -> None:
    result = run_json("bench/hot_path.py", "--payments", "64", "--window", "16")
    for key in ("client_pay", "encode", "decode", "server_receive", "ack_round_trip", "total"):
        value = result[key]
        assert isinstance(value, int | float) and value >= 0, key
    for key in ("fsync_ms", "ecdsa_verify_per_s", "schnorr_verify_per_s", "ecdsa_sign_per_s",
                "schnorr_sign_per_s"):  # the machine's figures, beside the parts
        figure = result[key]
        assert isinstance(figure, int | float) and figure > 0, key


def test_store_bench_reports_its_figures() -> None:
    result = run_json("bench/store_payments.py", "--payments", "200")
    assert any(isinstance(v, int | float) and v > 0 for v in result.values())


def test_metrics_bench_reports_its_figures() -> None:
    result = run_json("bench/metrics_hot_path.py", "--updates", "1000")
    figures = result["ns_per_update"]
    assert isinstance(figures, dict) and set(figures) >= {"counter_inc", "histogram_observe"}
    assert all(isinstance(v, int) and v > 0 for v in figures.values())


def test_spam_bench_reports_its_figures_and_a_store_that_did_not_grow() -> None:
    result = run_json("bench/spam.py", "--attempts", "40", "--junk", "10", "--blocks", "2")
    outcomes = result["outcomes"]
    assert isinstance(outcomes, dict)
    assert outcomes.pop("BAD_TRANSACTION") == 40  # every fake contract refused
    assert set(outcomes) <= {"junk answered", "junk connect-and-close"}  # under the limits
    assert sum(outcomes.values()) == 10
    assert result["rows_after_spam"] == result["rows_before"] == 1
    for key in ("payments_per_s_before", "payments_per_s_spam", "payments_per_s_blocks",
                "longest_ack_gap_ms"):
        value = result[key]
        assert isinstance(value, int | float) and value > 0, key


def test_scale_bench_reports_its_figures() -> None:
    stored = run_json("bench/scale.py", "--channels", "200")
    assert stored["block_1_channels_touched"] == 1  # the spent watched output's channel
    assert stored["block_100_channels_touched"] == 100
    for key in ("restart_to_serving_s", "block_1_spends_s", "block_100_spends_s",
                "server_peak_rss_mb", "live_max_ack_gap_ms"):
        value = stored[key]
        assert isinstance(value, int | float) and value > 0, key
    live = run_json("bench/scale.py", "--connections", "20", "--payments", "2")
    assert live["connections"] == 20
    for key in ("payments_per_s", "p99_ms", "rss_per_connection_kb"):
        assert isinstance(live[key], int | float), key


def test_failover_kills_freezes_and_restarts_and_loses_nor_doubles_nothing() -> None:
    result = run_json("bench/failover.py", "--instances", "2", "--clients", "3", "--kills",
                      "2", "--kill-every", "1", "--phase", "1", "--stop-for", "3",
                      "--pg-restarts", "1")
    during = result["payments_acknowledged_during_kills"]
    assert result["kills"] == 2 and isinstance(during, int) and during > 0
    gaps = result["longest_unable_to_pay_s"]
    assert isinstance(gaps, dict) and set(gaps) == {"sigkill", "sigstop", "postgres_restart"}
    assert result["sigstop_s"] == 3 and result["postgres_restarts"] == 1
    assert isinstance(result["all_paying_after_postgres_ready_s"], float)
    assert result["payments_lost"] == 0 and result["double_accepted"] == 0
    assert result["settlements_broadcast_twice"] == 0
    assert result["channels_settled"] == result["channels_closed_by_clients"] == 3
    rates = result["payments_per_s"]
    assert isinstance(rates, dict) and set(rates) == {"1", "2"}


def test_gateway_reports_its_figures() -> None:
    result = run_json("bench/gateway.py", "--clients", "2", "--requests", "5", "--stream-mb", "1")
    for key in ("direct_per_s", "paid_per_s", "paid_p50_ms", "overhead_p50_ms",
                "overhead_p99_ms", "stream_mb_per_s"):
        value = result[key]
        assert isinstance(value, int | float) and value > 0, key
    assert result["paid_requests"] == 2 * 5 + 2 and result["stream_bytes"] == 1 << 20


def test_renew_reports_its_figures() -> None:
    result = run_json("bench/renew.py", "--reanchors", "2", "--window", "4",
                      "--promotion-timeout", "2")
    assert isinstance(result["reanchors"], int) and result["reanchors"] >= 1
    for key in ("reanchor_round_trip_ms", "longest_ack_gap_ms", "payments_per_s",
                "vbytes_per_renewal", "vbytes_close_plus_reopen"):
        value = result[key]
        assert isinstance(value, int | float) and value > 0, key
    assert result["vbytes_per_renewal"] < result["vbytes_close_plus_reopen"]  # type: ignore
