"""Prometheus alert rules (deploy/prometheus/alerts.yml) and scrape config, checked by promtool:
the rules parse, their unit tests (alerts_test.yml) pass, and every alert has a unit test.

promtool comes with Debian's `prometheus` package (`make deploy-tools`); without it the promtool
tests skip, except under CI, where they fail.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from tests.deploy.conftest import run, unavailable

PROMETHEUS_DIR = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"

Promtool = Callable[..., str]


@pytest.fixture(scope="module")
def promtool() -> Promtool:
    """Runs promtool in deploy/prometheus; its output, once it has succeeded."""
    path = shutil.which("promtool")
    if path is None:
        unavailable("promtool is not installed (make deploy-tools: apt-get install prometheus)")

    def promtool(*args: str) -> str:
        done = run([path, *args], cwd=PROMETHEUS_DIR, timeout=60)
        output = done.stdout + done.stderr
        assert done.returncode == 0, f"promtool {' '.join(args)} failed:\n{output}"
        return output

    return promtool


def test_alert_rules_parse(promtool: Promtool) -> None:
    assert "SUCCESS" in promtool("check", "rules", "alerts.yml")


def test_scrape_config_parses(promtool: Promtool) -> None:
    """Syntax only: the gateway's credentials file is compose's secret, absent here
    (tests/deploy/test_dashboards.py runs the config for real with a key file of its own)."""
    assert "SUCCESS" in promtool("check", "config", "--syntax-only", "prometheus.yml")


def test_alert_rules_unit_tests_pass(promtool: Promtool) -> None:
    assert "SUCCESS" in promtool("test", "rules", "alerts_test.yml")


def test_every_alert_is_unit_tested_both_ways() -> None:
    """Each alert has a test case where it fires and one where it does not."""
    rules = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())
    alerts = {rule["alert"] for group in rules["groups"] for rule in group["rules"]}
    required = {
        "CorralBackendDown",
        "CorralLaneStuck",
        "CorralDeadLettersWaiting",
        "CorralQueueWaitHigh",
        "CorralSchedulerStandbyMissing",
    }
    assert required <= alerts
    tests = yaml.safe_load((PROMETHEUS_DIR / "alerts_test.yml").read_text())
    cases = [case for test in tests["tests"] for case in test.get("alert_rule_test", [])]
    fires = {case["alertname"] for case in cases if case.get("exp_alerts")}
    quiet = {case["alertname"] for case in cases if not case.get("exp_alerts")}
    assert alerts - fires == set(), "alerts never seen firing in a test"
    assert alerts - quiet == set(), "alerts never seen quiet in a test"
