"""The key registries: which keys each section accepts, and which set a policy's fields."""

from __future__ import annotations

import dataclasses
from typing import Any

from bitcoind_paychan.channel.fees import FeePolicy
from bitcoind_paychan.daemon.config.schema import (
    BitcoindConfig,
    ClientConfig,
    ControlConfig,
    DaemonConfig,
    GatewayConfig,
    LoggingConfig,
    MetricsConfig,
    SchedulerConfig,
    ServerConfig,
    StoreConfig,
)
from bitcoind_paychan.store import SessionTimeouts
from bitcoind_paychan.store.leases import ClusterPolicy

SECTIONS: dict[str, type[Any]] = {
    "bitcoind": BitcoindConfig, "server": ServerConfig, "client": ClientConfig,
    "store": StoreConfig, "scheduler": SchedulerConfig, "fees": FeePolicy,
    "logging": LoggingConfig, "control": ControlConfig, "metrics": MetricsConfig,
    "cluster": ClusterPolicy, "daemon": DaemonConfig, "gateway": GatewayConfig,
}
TOP_LEVEL = ("network", *SECTIONS)
# The keys that set a policy's field (key → field). Their defaults and rules are the policy's.
POLICY_KEYS: dict[str, dict[str, str]] = {
    "server": {"min_channel_size": "min_channel_size", "min_payment": "min_payment",
               "min_increment": "min_increment", "min_time_window": "min_time_window",
               "max_time_window": "max_time_window", "reanchoring": "reanchoring",
               "payout_above": "payout_above", "renew_before": "renew_before"},
    "client": {"channel_size": "value", "time_window": "time_window",
               "max_min_payment": "max_min_payment", "payment_window": "payment_window",
               "reanchoring": "reanchoring", "refill_below": "refill_below",
               "refill_to": "refill_to", "max_deposit": "max_deposit",
               "renew_before": "renew_before"},
    "scheduler": {"settle_margin": "settle_margin", "forget_depth": "forget_depth",
                  "bump_after_blocks": "bump_after_blocks"},
    "fees": {"target": "target", "min_rate": "min_rate", "max_rate": "max_rate"},
}
# The server section's keys for its PeerLimits (key → field), read like POLICY_KEYS.
LIMIT_KEYS = {"max_connections_per_minute": "max_connections_per_minute",
              "max_handshakes_per_ip": "max_handshakes_per_ip",
              "max_contract_checks": "max_contract_checks"}
# The server section's keys for its TrustedProxies (the WebSocket listener's).
PROXY_KEYS = ("trusted_proxies", "proxy_header")
# The store section's keys for its SessionTimeouts (PostgreSQL only), in seconds.
TIMEOUT_KEYS = tuple(f.name for f in dataclasses.fields(SessionTimeouts))
# Section fields built from keys, not keys themselves.
BUILT = ("policy", "limits", "tls", "proxies", "timeouts")
NULL_IS_DEFAULT = {"scheduler.settle_margin"}  # null: the policy derives it


def section_keys(section: str) -> tuple[str, ...]:
    """The keys a section accepts: its own settings, then those that set its policy."""
    own = [f.name for f in dataclasses.fields(SECTIONS[section]) if f.name not in BUILT]
    policy = {**POLICY_KEYS.get(section, {}), **(LIMIT_KEYS if section == "server" else {})}
    built = {"server": PROXY_KEYS, "store": TIMEOUT_KEYS}.get(section, ())
    return (*(k for k in own if k not in policy.values()), *policy, *built)


SERVER_ENTRY_KEYS = ("address", "tls", "ca_file", "fingerprint")
ROUTE_KEYS = ("path", "upstream", "per", "price", "reserve", "quantity", "timeout")
