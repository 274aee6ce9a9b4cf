"""Loading: a file (or none: every default) → a validated Config; only the control section
for the CLI."""

from __future__ import annotations

import stat
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from bitcoind_paychan.channel.fees import FeePolicy
from bitcoind_paychan.channel.watch import WatchPolicy
from bitcoind_paychan.daemon.config.gateway import read_gateway
from bitcoind_paychan.daemon.config.keys import TOP_LEVEL
from bitcoind_paychan.daemon.config.reader import Problem, Reader
from bitcoind_paychan.daemon.config.roles import read_client, read_server
from bitcoind_paychan.daemon.config.schema import (
    Config,
    ControlConfig,
    DaemonConfig,
    SchedulerConfig,
)
from bitcoind_paychan.daemon.config.sections import (
    cross_checks,
    read_bitcoind,
    read_cluster,
    read_control,
    read_logging,
    read_metrics,
    read_store,
)
from bitcoind_paychan.daemon.config.yamlfile import ENV, read_yaml
from bitcoind_paychan.daemon.eventloop import DEFAULT_EVENT_LOOP, EVENT_LOOPS
from bitcoind_paychan.errors import ConfigError
from bitcoind_paychan.node.config import CHAINS
from bitcoind_paychan.store.postgres import password_of

_T = TypeVar("_T")


def load_config(path: str | Path | None, *, check_files: bool = False,
                gateway_only: bool = False) -> Config:
    """Read and validate the YAML file at `path` (None: all defaults; an empty file too).

    `check_files` also checks that bitcoind's cookie file can be read (the daemon does at
    start; pure schema checks need no files). A file holding `bitcoind.password` must not be
    readable by group or others. `gateway_only` (`paychan gateway`): the gateway and the
    server role it runs on are enabled, the client role is not, whatever the file says.
    """
    if path is None:
        return config_from_dict(_gateway_only({}) if gateway_only else {}, None,
                                check_files=check_files)
    source, data, mode, lines = read_yaml(path)
    if gateway_only:
        data = _gateway_only(data)
    secret = _secret_key(data)
    if secret and mode & 0o077:
        who = " and ".join(w for w, bits in (("group", 0o070), ("others", 0o007)) if mode & bits)
        raise ConfigError(
            f"{source}: {secret}: the file holds a secret but is readable by {who} "
            f"(mode {stat.S_IMODE(mode):03o}), expected mode 600; fix: chmod 600 {source}")
    return config_from_dict(data, source, check_files=check_files, lines=lines)


def load_control_config(path: str | Path | None) -> ControlConfig:
    """Only what `paychan <command>` needs from the file at `path`: the network and the
    control section (checked as the daemon checks them). The rest is the daemon's: its
    `${NAME}`s are not expanded, so the CLI runs without the database password."""
    if path is None:
        return config_from_dict({}).control
    source, data, _, lines = read_yaml(path)
    r = Reader(source, lines)
    data = {key: r.substitute(data[key], key) for key in ("network", "control") if key in data}
    network = r.choice(data, "", "network", "regtest", CHAINS)
    try:
        control = read_control(r, r.section(data, "control"), network)
    except Problem as problem:
        r.problems.append(problem)
    r.raise_errors()
    return control


def _gateway_only(data: Mapping[str, Any]) -> dict[str, Any]:
    """`data` with only the gateway and its server enabled."""
    def section(name: str, enabled: bool) -> Any:
        found = data.get(name) or {}
        return {**found, "enabled": enabled} if isinstance(found, dict) else found  # (wrong)
    return {**data, "server": section("server", True), "gateway": section("gateway", True),
            "client": section("client", False)}


def _secret_key(data: Mapping[str, Any]) -> str | None:
    """The key that holds a secret in the file itself (not through ${NAME}), if any."""
    bitcoind, store = data.get("bitcoind"), data.get("store")
    if isinstance(bitcoind, dict) and bitcoind.get("password") is not None:
        return "bitcoind.password"
    if isinstance(store, dict) and isinstance(store.get("dsn"), str):
        password = password_of(store["dsn"])
        if password and not ENV.search(password):
            return "store.dsn"
    return None


def config_from_dict(data: Mapping[str, Any], source: Path | None = None, *,
                     check_files: bool = False, lines: Mapping[str, int] | None = None
                     ) -> Config:
    """Validate an already parsed configuration; `source` names the file in errors, `lines`
    (key path → line) puts them in file order. Every problem found is reported in one
    ConfigError: the schema's first, in file order, then the files that cannot be read."""
    r = Reader(source, lines)
    data = r.substitute(data, "")
    r.check_keys(data, "", TOP_LEVEL)
    network = r.choice(data, "", "network", "regtest", CHAINS)

    def files() -> bool:  # not when a section is rebuilt from defaults after a problem
        return check_files and not r.fallback

    def section(name: str, build: Callable[[dict[str, Any]], _T]) -> _T:
        """The section built from its keys; on a problem, noted, built from defaults."""
        try:
            return build(r.section(data, name))
        except Problem as problem:
            r.problems.append(problem)
            return r.defaults(lambda: build({}))

    fees = section("fees", lambda d: r.policy(d, "fees", FeePolicy))
    config = Config(
        network=network,
        bitcoind=section("bitcoind", lambda d: read_bitcoind(r, d, network, files())),
        server=section("server", lambda d: read_server(r, d, network, files())),
        client=section("client", lambda d: read_client(r, d, network, files())),
        store=section("store", lambda d: read_store(r, d, network)),
        scheduler=section("scheduler", lambda d: SchedulerConfig(
            review_interval=r.number(d, "scheduler", "review_interval", 60.0),
            policy=r.policy(d, "scheduler", WatchPolicy, fees=fees))),
        fees=fees,
        logging=section("logging", lambda d: read_logging(r, d, network)),
        control=section("control", lambda d: read_control(r, d, network)),
        metrics=section("metrics", lambda d: read_metrics(r, d)),
        cluster=section("cluster", lambda d: read_cluster(r, d)),
        daemon=section("daemon", lambda d: DaemonConfig(
            event_loop=r.choice(d, "daemon", "event_loop", DEFAULT_EVENT_LOOP, EVENT_LOOPS))),
        gateway=section("gateway", lambda d: read_gateway(r, d)),
        source=source,
    )
    r.raise_errors()  # the cross checks compare values that must be valid first
    try:
        cross_checks(r, config)
    except Problem as problem:
        r.problems.append(problem)
    r.raise_errors()
    # One settle margin, built once (scheduler.settle_margin): the server's machines stop
    # taking resumes when its autopilot settles.
    margin = config.scheduler.policy.settle_margin
    if not config.server.enabled:  # unchecked against it (see cross_checks), and unused
        return config
    server = replace(config.server, policy=replace(config.server.policy, settle_margin=margin))
    return replace(config, server=server)
