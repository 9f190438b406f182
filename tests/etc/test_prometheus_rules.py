"""etc/prometheus/gatewayd-rules.yml: `promtool check rules` and `promtool test rules` (Debian's
``prometheus`` package; ./scripts/test installs it when run as root), one firing and one silent
case per alert, a runbook anchor in docs/operations.md for each."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "etc" / "prometheus" / "gatewayd-rules.yml"
TESTS = ROOT / "etc" / "prometheus" / "gatewayd-rules.test.yml"
RUNBOOK = ROOT / "docs" / "operations.md"


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        if os.geteuid() != 0:
            pytest.skip("promtool missing: apt-get install prometheus (./scripts/test as root)")
        pytest.fail("promtool missing although running as root: apt-get install prometheus")
    return found


def alerts() -> dict[str, dict]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {rule["alert"]: rule for group in groups for rule in group["rules"] if "alert" in rule}


def test_promtool_checks_the_rules() -> None:
    run = subprocess.run(
        [promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in run.stdout


def test_promtool_unit_tests_pass() -> None:
    run = subprocess.run(
        [promtool(), "test", "rules", TESTS.name],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=TESTS.parent,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "SUCCESS" in run.stdout


def test_every_alert_has_a_firing_and_a_silent_case() -> None:
    cases = [
        case
        for test in yaml.safe_load(TESTS.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
    ]
    fired = {c["alertname"] for c in cases if c.get("exp_alerts")}
    silent = {c["alertname"] for c in cases if not c.get("exp_alerts")}
    assert set(alerts()) == fired == silent


def test_every_alert_links_its_own_runbook_anchor() -> None:
    headings = re.findall(r"^#+ (.+)$", RUNBOOK.read_text(), re.M)
    anchors = {re.sub(r"[^a-z0-9 _-]", "", h.strip().lower()).replace(" ", "-") for h in headings}
    seen = set()
    for name, rule in alerts().items():
        url = rule["annotations"]["runbook_url"]
        page, _, anchor = url.partition("#")
        assert page == "docs/operations.md", name
        assert anchor in anchors, f"{name}: no heading for #{anchor} in docs/operations.md"
        assert anchor not in seen, f"{name}: #{anchor} is another alert's"
        seen.add(anchor)
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
