"""The Grafana dashboard (etc/grafana/textfile-probe.json) and the alerting rules against a real monitoring stack.

The JSON checks always run. The rest builds the real chain once per module: TLS servers on loopback (a valid chain,
leaves with 10 and 3 days left, an expired one, one not yet valid, one with the wrong name, and a closed port), one
real `textfile-probe run --once` writing into a temporary textfile directory, the real node_exporter reading it, and
a real Prometheus scraping node_exporter every second and evaluating etc/prometheus/textfile-probe.rules.yml every
second. Every panel query of the dashboard, with Grafana's variables substituted, must then return data from
Prometheus's HTTP API, the variable queries must find our node and targets, and the alerts must be pending for
exactly the targets that deserve them, with the annotations rendered from real labels. Skipped only when the
prometheus or node_exporter binary is missing (CI installs both). Every wait is bounded; every process is stopped.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from oneshot import run_once
from pki import Pki, write_pem
from servers import ClosedPort, TlsServer, stop_process

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "etc" / "grafana" / "textfile-probe.json"
RULES = ROOT / "etc" / "prometheus" / "textfile-probe.rules.yml"
PROMETHEUS = shutil.which("prometheus")
NODE_EXPORTER = shutil.which("prometheus-node-exporter") or shutil.which("node_exporter")
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
VARIABLES = {"datasource", "node", "target"}
GRAFANA_INTERVALS = {"__rate_interval": "1m", "__interval": "1m", "__range": "5m"}
STARTUP_TIMEOUT = 20.0  # node_exporter or Prometheus answering on its port
DATA_TIMEOUT = 30.0  # our series scraped, then the alerts evaluated
GRID_WIDTH = 24

# (alert, target) pending in the live stack; every other combination must stay quiet.
EXPECTED_ALERTS = {
    ("TextfileProbeCertificateExpiresIn30Days", "in10d"),
    ("TextfileProbeCertificateExpiresIn7Days", "in3d"),
    ("TextfileProbeCertificateExpired", "expired"),
    ("TextfileProbeCertificateNotYetValid", "future"),
    ("TextfileProbeVerifyFailed", "wrongname"),
    ("TextfileProbeTargetDown", "closed"),
    ("TextfileProbeServedCertificateNotOnDisk", "renewed"),
    ("TextfileProbeFileCertificateExpiresIn30Days", ""),
    ("TextfileProbeFileUnreadable", ""),
}


def load_dashboard() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return dashboard


def panel_queries(dashboard: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(panel title, refId, expr) of every query of every panel."""
    return [(panel["title"], t["refId"], t["expr"]) for panel in dashboard["panels"] for t in panel["targets"]]


def variable(dashboard: dict[str, Any], name: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [v for v in dashboard["templating"]["list"] if v["name"] == name]
    assert len(found) == 1, f"variable {name}: {found}"
    return found[0]


def grafana_regex(value: str) -> str:
    """A single selected value as Grafana's Prometheus data source puts it into a regex matcher."""
    return re.sub(r"([\\^$*+?.()|{}\[\]])", r"\\\\\1", value)


def substitute(expr: str, values: dict[str, str]) -> str:
    """`expr` with $name and ${name} replaced; fails on a variable that is not in `values`."""

    def one(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        assert name in values, f"unknown variable ${name} in {expr}"
        return values[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", one, expr)


# --------------------------------------------------------------------------
# The JSON itself
# --------------------------------------------------------------------------


def test_dashboard_is_an_importable_grafana_dashboard() -> None:
    dashboard = load_dashboard()
    assert 36 <= dashboard["schemaVersion"] <= 41
    assert dashboard["uid"] == "textfile-probe"
    assert dashboard["title"]
    assert dashboard["id"] is None, "an exported id would clash on import"
    assert [v["name"] for v in dashboard["templating"]["list"]] == ["datasource", "node", "target"]


def test_every_panel_has_an_id_a_place_and_the_datasource_variable() -> None:
    panels = load_dashboard()["panels"]
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {ids}"
    cells: dict[tuple[int, int], str] = {}
    for panel in panels:
        title = panel["title"]
        assert panel["datasource"] == DATASOURCE, title
        assert panel["description"], title
        grid = panel["gridPos"]
        assert set(grid) == {"x", "y", "w", "h"}, title
        assert all(isinstance(grid[k], int) for k in grid), title
        assert grid["w"] > 0 and grid["h"] > 0 and grid["x"] >= 0 and grid["y"] >= 0, title
        assert grid["x"] + grid["w"] <= GRID_WIDTH, title
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{title} overlaps {cells[(x, y)]}"
                cells[(x, y)] = title
        targets = panel["targets"]
        assert targets, title
        ref_ids = [target["refId"] for target in targets]
        assert len(ref_ids) == len(set(ref_ids)), title
        for target in targets:
            assert target["datasource"] == DATASOURCE, title
            assert target["expr"].strip(), title
            if panel["type"] == "table":
                assert target.get("format") == "table" and target.get("instant") is True, title


def test_variables_use_the_datasource_and_only_known_variables_are_used() -> None:
    dashboard = load_dashboard()
    source = variable(dashboard, "datasource")
    assert (source["type"], source["query"]) == ("datasource", "prometheus")
    node = variable(dashboard, "node")
    assert node["query"] == "label_values(textfile_probe_build_info, instance)"
    target = variable(dashboard, "target")
    assert target["query"] == 'label_values(probe_success{instance=~"$node"}, target)'
    for var in (node, target):
        assert var["datasource"] == DATASOURCE
        assert var["multi"] and var["includeAll"] and var["allValue"] == ".*"
    known = dict.fromkeys(VARIABLES | set(GRAFANA_INTERVALS), "x")
    for _title, _ref, expr in panel_queries(dashboard):
        substitute(expr, known)


# --------------------------------------------------------------------------
# The live stack
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Stack:
    prometheus: str  # base URL
    instance: str  # node_exporter's `instance` label, i.e. the node
    targets: frozenset[str]
    base: Path  # where the scenario's files live


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _answers(url: str, process: subprocess.Popen[bytes], deadline: float) -> bool:
    """GET `url` until it answers 200, the process dies, or `deadline`."""
    for _ in range(1000):
        if process.poll() is not None or time.monotonic() > deadline:
            return False
        try:
            with urllib.request.urlopen(url, timeout=2.0) as response:
                if response.status == 200:
                    return True
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.1)
    return False


@contextlib.contextmanager
def serving(command: Callable[[int], list[str]], ready_path: str, log_path: Path) -> Iterator[str]:
    """Run `command(port)` on a free loopback port until `ready_path` answers; yield its base URL; stop it."""
    for _attempt in range(3):  # the port may be taken between picking and binding it
        port = _free_port()
        with log_path.open("ab") as log:
            process = subprocess.Popen(command(port), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        try:
            base = f"http://127.0.0.1:{port}"
            if _answers(base + ready_path, process, time.monotonic() + STARTUP_TIMEOUT):
                yield base
                return
        finally:
            stop_process(process)
    raise AssertionError(f"{command(0)[0]} never answered:\n{log_path.read_text(errors='replace')}")


def api(base: str, path: str, **params: str) -> Any:
    """GET a Prometheus API path; the decoded `data` of a successful answer."""
    url = f"{base}{path}?{urllib.parse.urlencode(params)}"
    try:
        with urllib.request.urlopen(url, timeout=10.0) as response:
            body = json.loads(response.read())
    except urllib.error.HTTPError as exc:  # a bad query answers 400 with the error in the body
        body = json.loads(exc.read())
    assert body["status"] == "success", f"{path} {params}: {body}"
    return body["data"]


def wait_for(what: str, check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + DATA_TIMEOUT
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {DATA_TIMEOUT}s waiting for {what}")


def probe_once(pki: Pki, base: Path, textfile_dir: Path) -> frozenset[str]:
    """Serve the scenario's endpoints, run one real probe cycle into `textfile_dir`; the target names."""
    trust = write_pem(base / "root.pem", pki.root)
    leaves = {
        "good": pki.leaf(),
        "in10d": pki.leaf(valid_for=timedelta(days=10)),
        "in3d": pki.leaf(valid_for=timedelta(days=3)),
        "expired": pki.leaf(valid_for=timedelta(days=-3)),
        "future": pki.leaf(not_before=pki.now + timedelta(days=2)),
        "wrongname": pki.leaf(),
        "renewed": pki.leaf(),  # serves this one; its keystore on disk already holds the next
    }
    # Files: each target's keystore (for "renewed", the next certificate, not yet served), a truststore whose
    # CA nobody sends and that expires in 20 days, and a keystore that is missing.
    keystores = base / "keystores"
    keystores.mkdir()
    for name, leaf in leaves.items():
        write_pem(keystores / f"{name}.pem", pki.leaf() if name == "renewed" else leaf)
    write_pem(base / "truststore.pem", pki.leaf("Old Partner CA", valid_for=timedelta(days=20)))
    with contextlib.ExitStack() as stack:
        targets: list[dict[str, Any]] = [
            {
                "name": name,
                "address": stack.enter_context(TlsServer(pki.chain_for(leaf), leaf.key)).address,
                "server_name": "wrong.example.com" if name == "wrongname" else "localhost",
                "keystore": str(keystores / f"{name}.pem"),
            }
            for name, leaf in leaves.items()
        ]
        targets.append({"name": "closed", "address": stack.enter_context(ClosedPort()).address})
        config = {
            "output": str(textfile_dir / "textfile_probe.prom"),
            "timeout": "3s",
            "defaults": {"ca_file": str(trust)},
            "targets": targets,
            "files": [str(base / "truststore.pem"), str(base / "missing-keystore.jks")],
        }
        run_once(base, config)
    return frozenset(t["name"] for t in targets)


def prometheus_config(base: Path, node_exporter: str) -> Path:
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [
            {"job_name": "node", "static_configs": [{"targets": [urllib.parse.urlsplit(node_exporter).netloc]}]}
        ],
    }
    path = base / "prometheus.yml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    if PROMETHEUS is None or NODE_EXPORTER is None:
        pytest.skip("prometheus or node_exporter missing (Debian packages 'prometheus', 'prometheus-node-exporter')")
    base = tmp_path_factory.mktemp("dashboard")
    textfile_dir = base / "textfile"
    textfile_dir.mkdir()
    targets = probe_once(Pki(), base, textfile_dir)
    with contextlib.ExitStack() as processes:
        exporter = processes.enter_context(
            serving(
                lambda port: [
                    str(NODE_EXPORTER),
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--collector.disable-defaults",
                    "--collector.textfile",
                    f"--collector.textfile.directory={textfile_dir}",
                ],
                "/metrics",
                base / "node_exporter.log",
            )
        )
        config = prometheus_config(base, exporter)
        prometheus = processes.enter_context(
            serving(
                lambda port: [
                    str(PROMETHEUS),
                    f"--config.file={config}",
                    f"--storage.tsdb.path={base / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--log.level=warn",
                ],
                "/-/ready",
                base / "prometheus.log",
            )
        )
        wait_for(
            "our series in Prometheus",
            lambda: bool(api(prometheus, "/api/v1/query", query="textfile_probe_build_info")["result"]),
        )
        wait_for("the rules' first evaluation", lambda: _alerts(prometheus) >= EXPECTED_ALERTS)
        yield Stack(prometheus, urllib.parse.urlsplit(exporter).netloc, targets, base)


def _live_alerts(base: str) -> list[dict[str, Any]]:
    alerts: list[dict[str, Any]] = api(base, "/api/v1/alerts")["alerts"]
    return alerts


def _alerts(base: str) -> set[tuple[str, str]]:
    return {(a["labels"]["alertname"], a["labels"].get("target", "")) for a in _live_alerts(base)}


def test_every_panel_query_returns_data(stack: Stack) -> None:
    values = {
        "node": grafana_regex(stack.instance),
        "target": ".*",
        "datasource": "",
        **GRAFANA_INTERVALS,
    }
    empty = []
    for title, ref_id, expr in panel_queries(load_dashboard()):
        query = substitute(expr, values)
        result = api(stack.prometheus, "/api/v1/query", query=query)["result"]
        print(f"{title} [{ref_id}]: {len(result)} series, first {result[0] if result else None}")
        if not result:
            empty.append(f"{title} [{ref_id}]: {query}")
    assert not empty, "panel queries without data:\n" + "\n".join(empty)


def test_variable_queries_find_our_node_and_targets(stack: Stack) -> None:
    dashboard = load_dashboard()
    found = {}
    for name in ("node", "target"):
        query = substitute(variable(dashboard, name)["query"], {"node": grafana_regex(stack.instance)})
        match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query)
        assert match, query
        selector, label = match.groups()
        found[name] = set(api(stack.prometheus, f"/api/v1/label/{label}/values", **{"match[]": selector}))
    assert found == {"node": {stack.instance}, "target": set(stack.targets)}


def test_the_rules_load_and_evaluate_cleanly(stack: Stack) -> None:
    groups = api(stack.prometheus, "/api/v1/rules")["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert len(rules) == len(re.findall(r"^\s+- alert:", RULES.read_text(encoding="utf-8"), flags=re.MULTILINE))
    unhealthy = [(rule["name"], rule.get("lastError")) for rule in rules if rule["health"] != "ok"]
    assert not unhealthy


def test_alerts_pend_for_exactly_the_broken_targets_with_rendered_annotations(stack: Stack) -> None:
    alerts = _live_alerts(stack.prometheus)
    assert {(a["labels"]["alertname"], a["labels"].get("target", "")) for a in alerts} == EXPECTED_ALERTS
    node = stack.instance
    summaries = {(a["labels"]["alertname"], a["labels"].get("target", "")): a["annotations"]["summary"] for a in alerts}
    assert summaries == {
        (
            "TextfileProbeCertificateExpiresIn30Days",
            "in10d",
        ): f"Certificate localhost of in10d on {node} expires in 10.0 days",
        (
            "TextfileProbeCertificateExpiresIn7Days",
            "in3d",
        ): f"Certificate localhost of in3d on {node} expires in 3.0 days",
        (
            "TextfileProbeCertificateExpired",
            "expired",
        ): f"Certificate localhost of expired on {node} expired 3.0 days ago",
        ("TextfileProbeCertificateNotYetValid", "future"): (
            f"Certificate localhost of future on {node} is not valid for another 2.0 days"
        ),
        ("TextfileProbeVerifyFailed", "wrongname"): f"TLS verification of wrongname on {node} fails: hostname_mismatch",
        ("TextfileProbeTargetDown", "closed"): f"Probe of closed on {node} has failed for 5 minutes (connect: refused)",
        ("TextfileProbeServedCertificateNotOnDisk", "renewed"): (
            f"renewed on {node} serves a certificate that is not the one in {stack.base / 'keystores' / 'renewed.pem'}"
        ),
        ("TextfileProbeFileCertificateExpiresIn30Days", ""): (
            f"Certificate Old Partner CA in {stack.base / 'truststore.pem'} on {node} expires in 20.0 days"
        ),
        ("TextfileProbeFileUnreadable", ""): (
            f"{stack.base / 'missing-keystore.jks'} on {node} cannot be read: not_found"
        ),
    }
    by_target = {a["labels"].get("target"): a for a in alerts}
    assert {a["state"] for a in alerts} == {"pending"}  # every `for` is minutes long
    assert by_target["in10d"]["labels"]["position"] == "0"
    assert "stage" not in by_target["closed"]["labels"]  # stage and reason live in the annotations
    assert by_target["wrongname"]["labels"]["reason"] == "hostname_mismatch"
    assert 'leaf is "CN=localhost"' in by_target["wrongname"]["annotations"]["description"]
