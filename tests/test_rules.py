"""The alerting rules (etc/prometheus/textfile-probe.rules.yml) against promtool and their unit tests (tests/rules/).

`promtool check rules` and `promtool test rules` run only where promtool is installed (CI installs the Debian package
`prometheus`); the checks that every alert has both a firing and a quiet unit test, and a section in docs/alerts.md,
read the YAML and always run. tests/test_dashboard.py loads the same rules into a real Prometheus scraping our real
output.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "etc" / "prometheus" / "textfile-probe.rules.yml"
UNIT_TESTS = sorted((ROOT / "tests" / "rules").glob("*.test.yml"))
ALERTS_DOC = ROOT / "docs" / "alerts.md"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (Debian package 'prometheus')")


def _load(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in _load(RULES)["groups"] for rule in group["rules"] if "alert" in rule]


def alert_checks() -> list[dict[str, Any]]:
    """Every `alert_rule_test` entry of every unit-test file."""
    return [check for path in UNIT_TESTS for test in _load(path)["tests"] for check in test.get("alert_rule_test", [])]


def _promtool(*args: str) -> tuple[int, str]:
    assert PROMTOOL is not None
    done = subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60, check=False, cwd=ROOT)
    return done.returncode, done.stdout + done.stderr


@needs_promtool
def test_promtool_accepts_the_rules() -> None:
    code, printed = _promtool("check", "rules", str(RULES))
    assert code == 0, printed
    assert f"SUCCESS: {len(alert_rules())} rules found" in printed, printed


@needs_promtool
def test_promtool_unit_tests_pass() -> None:
    assert UNIT_TESTS, "no tests/rules/*.test.yml"
    code, printed = _promtool("test", "rules", *map(str, UNIT_TESTS))
    assert code == 0, printed
    assert "FAILED" not in printed, printed


def test_unit_tests_load_the_shipped_rules() -> None:
    for path in UNIT_TESTS:
        files = [(path.parent / name).resolve() for name in _load(path)["rule_files"]]
        assert files == [RULES], f"{path.name} loads {files}"


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    firing = {check["alertname"] for check in alert_checks() if check.get("exp_alerts")}
    quiet = {check["alertname"] for check in alert_checks() if not check.get("exp_alerts")}
    names = {rule["alert"] for rule in alert_rules()}
    assert names - firing == set(), "alerts never tested firing"
    assert names - quiet == set(), "alerts never tested quiet"
    assert (firing | quiet) - names == set(), "unit tests of alerts that do not exist"


def test_every_firing_expectation_pins_labels_and_rendered_annotations() -> None:
    annotations_of = {rule["alert"]: set(rule["annotations"]) for rule in alert_rules()}
    for check in alert_checks():
        for expected in check.get("exp_alerts") or []:
            where = f"{check['alertname']} at {check['eval_time']}"
            assert expected.get("exp_labels", {}).get("severity"), f"{where}: exp_labels without severity"
            assert set(expected.get("exp_annotations", {})) == annotations_of[check["alertname"]], where


def test_every_alert_has_a_severity_and_says_where() -> None:
    for rule in alert_rules():
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert set(rule["annotations"]) == {"summary", "description"}, rule["alert"]
        for text in rule["annotations"].values():
            assert "$labels.instance" in text, f"{rule['alert']}: an annotation does not name the node"


def test_every_alert_is_documented() -> None:
    doc = ALERTS_DOC.read_text(encoding="utf-8")
    missing = [rule["alert"] for rule in alert_rules() if f"### {rule['alert']}" not in doc]
    assert not missing, f"alerts without a section in docs/alerts.md: {missing}"
