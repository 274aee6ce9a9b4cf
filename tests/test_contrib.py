"""contrib/: the Prometheus alert rules (tested by Debian's promtool) and the Grafana dashboard,
both written against the metrics the daemon really exposes."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.daemon.test_metrics import exercised, samples
from tests.tools import promtool

CONTRIB = Path(__file__).resolve().parents[1] / "contrib"
RULES = CONTRIB / "prometheus" / "paychan-alerts.yml"
RULE_TESTS = CONTRIB / "prometheus" / "paychan-alerts.test.yml"
DASHBOARD = CONTRIB / "grafana" / "paychan-dashboard.json"
METRIC = re.compile(r"\b((?:paychan|process|python)_[a-z_]+)\b")


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
    assert {"PaychanNodeDown", "PaychanDeadlineNearNodeUnhealthy", "PaychanSettlementStuck",
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
