"""contrib/: the systemd unit passes `systemd-analyze verify` and is hardened; the example
configurations point where that unit and bitcoind's own unit put things; the Prometheus alert
rules (tested by Debian's promtool) and the Grafana dashboard are written against the metrics
the daemon really exposes."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from bitcoind_paychan.daemon.config import load_config
from regtest import fetch
from tests.daemon.test_metrics import exercised, samples
from tests.tools import debian_tree, promtool

ROOT = Path(__file__).resolve().parents[1]
CONTRIB = ROOT / "contrib"
UNIT = CONTRIB / "paychan.service"
RULES = CONTRIB / "prometheus" / "paychan-alerts.yml"
RULE_TESTS = CONTRIB / "prometheus" / "paychan-alerts.test.yml"
DASHBOARD = CONTRIB / "grafana" / "paychan-dashboard.json"
METRIC = re.compile(r"\b((?:paychan|process|python)_[a-z_]+)\b")


def directives(unit: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in unit.splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.startswith("#"):
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def systemd_analyze(search_path: bool = True) -> tuple[list[str], dict[str, str]]:
    """The command that runs systemd-analyze, and its environment: the machine's own, else
    Debian sid's systemd unpacked once into the cache (with its units, which verify needs)."""
    found = shutil.which("systemd-analyze") if search_path else None
    if found:
        return [found], {}
    tree = debian_tree("systemd", "systemd", "usr/bin/systemd-analyze")
    libraries = f"{tree / fetch.LIBDIR}:{tree / fetch.LIBDIR / 'systemd'}"
    command = [str(tree / fetch.LOADER), "--library-path", libraries,
               str(tree / "usr/bin/systemd-analyze")]
    return command, {"SYSTEMD_UNIT_PATH": str(tree / "usr/lib/systemd/system")}


@pytest.mark.parametrize("machines_own", [True, False], ids=["machines-own", "debian-sid"])
def test_the_unit_passes_systemd_analyze_verify(tmp_path: Path, machines_own: bool) -> None:
    unit = UNIT.read_text()
    program = directives(unit)["ExecStart"][0].split()[0]
    # verify also checks that ExecStart's program exists: here, the paychan of this venv.
    installed = Path(sys.executable).with_name("paychan")
    copy = tmp_path / UNIT.name
    copy.write_text(unit.replace(f"ExecStart={program} ", f"ExecStart={installed} "))
    assert copy.read_text() != unit
    command, env = systemd_analyze(search_path=machines_own)
    done = subprocess.run([*command, "verify", str(copy)], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=120)
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


def test_the_unit_is_hardened_and_needs_no_bitcoind_unit() -> None:
    found = directives(UNIT.read_text())
    assert "Requires" not in found  # a bitcoind.service may not exist: Wants/After only
    assert "bitcoind.service" in found["Wants"][0] and "bitcoind.service" in found["After"][0]
    for key, value in [("ProtectProc", "invisible"), ("ProcSubset", "pid"), ("RemoveIPC", "yes"),
                       ("ProtectSystem", "strict"), ("ProtectHome", "true"),
                       ("NoNewPrivileges", "true"), ("UMask", "0077"), ("User", "paychan")]:
        assert found[key] == [value], key
    assert found["ReadOnlyPaths"] == ["/etc/paychan -/var/lib/bitcoind"]  # bitcoind's: optional


@pytest.mark.parametrize(("name", "cookie"), [
    ("mainnet", "/var/lib/bitcoind/.cookie"), ("signet", "/var/lib/bitcoind/signet/.cookie")])
def test_examples_read_bitcoinds_cookie_where_bitcoind_writes_it(name: str, cookie: str) -> None:
    # Not ~/.bitcoin/...: `~` would be the paychan user's home, not bitcoind's datadir.
    assert load_config(CONTRIB / f"paychan.{name}.yaml").bitcoind.cookie_file == Path(cookie)


def test_the_mainnet_example_fits_the_unit() -> None:
    unit = directives(UNIT.read_text())
    config = load_config(CONTRIB / "paychan.mainnet.yaml")
    state = Path("/var/lib") / unit["StateDirectory"][0]
    runtime = Path("/run") / unit["RuntimeDirectory"][0]
    assert config.store.path is not None and config.store.path.is_relative_to(state)
    assert config.control.cookie_file.parent == runtime
    assert unit["RuntimeDirectoryMode"] == ["0750"] and config.control.cookie_mode == 0o640
    assert unit["StateDirectoryMode"] == ["0700"]  # the store: the daemon's user only
    assert re.search(r"--config /etc/paychan/paychan\.yaml$", unit["ExecStart"][0])


def test_the_several_instances_example_shares_a_postgresql_store_behind_a_balancer(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGPASSWORD", "secret")
    folder = CONTRIB / "several-instances"
    config = load_config(folder / "paychan.instance.yaml")
    assert config.store.engine == "postgresql" and config.store.dsn is not None
    assert "secret" in config.store.dsn  # the password from the environment, not the file
    assert config.cluster.instance_id == "paychan-1" and config.server.enabled
    listen = config.server.listen
    for balancer in ("haproxy.cfg", "nginx-stream.conf"):  # the instance is a backend there
        assert listen in (folder / balancer).read_text(), balancer
    # the balancers name each client in a PROXY header, which the instance reads from them
    assert config.server.proxy_protocol and config.server.proxies.trusts_host("10.0.0.2")
    haproxy = (folder / "haproxy.cfg").read_text()
    assert re.search(r"^\s*default-server .*\bsend-proxy-v2\b.*\bcheck-send-proxy\b", haproxy,
                     re.MULTILINE)
    assert re.search(r"^\s*proxy_protocol on;", (folder / "nginx-stream.conf").read_text(),
                     re.MULTILINE)


def rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def exposed() -> set[str]:
    return set(samples(exercised().render().decode()))


def test_alert_rules_pass_promtool() -> None:
    tool = str(promtool())
    for args in (["check", "rules", RULES.name], ["test", "rules", RULE_TESTS.name]):
        done = subprocess.run([tool, *args], cwd=RULES.parent, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_is_tested_firing_and_quiet() -> None:
    cases: dict[str, list[list[Any]]] = {}
    for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for case in test["alert_rule_test"]:
            cases.setdefault(case["alertname"], []).append(case["exp_alerts"])
    names = [rule["alert"] for rule in rules()]
    assert {"PaychanNodeDown", "PaychanDeadlineNearCannotSettle", "PaychanCannotSettle",
            "PaychanSettlementStuck",
            "PaychanPaymentsErroring", "PaychanStoreGrowingFast"} <= set(names)
    for name in names:
        assert any(expected for expected in cases.get(name, [])), f"{name} never fires"
        assert any(not expected for expected in cases.get(name, [])), f"{name} never quiet"


def test_rules_and_dashboard_use_only_exposed_metrics() -> None:
    known = exposed()
    expressions = [rule["expr"] for rule in rules()]
    dashboard = json.loads(DASHBOARD.read_text())
    targets = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    for expression in expressions + targets:
        for name in METRIC.findall(expression):
            assert name in known, f"{name} (in {expression!r}) is not exposed"
    for expression in targets:  # several daemons: each panel follows the instance picker
        assert 'instance=~"$instance"' in expression, expression
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert variables == {"datasource", "instance"}
