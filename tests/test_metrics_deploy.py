"""The dashboard, alerting rules and scrape config under deploy/ (docs: Operations, "Metrics and traces")
parse with Prometheus' own promtool and name only metrics that the service exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from asgi_todo.app import create_app

from .helpers import ALICE, login, make_settings, require

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
DASHBOARD = DEPLOY / "grafana" / "asgi_todo.json"
ALERTS = DEPLOY / "prometheus" / "alerts.yaml"
SCRAPE = DEPLOY / "prometheus" / "scrape.yaml"
_METRIC = re.compile(r"\basgi_todo_[a-z0-9_]+")
# Grafana's own variables, as Prometheus would see them once Grafana has filled them in.
_GRAFANA = {"$__rate_interval": "1m", "$__range": "1h", "$__interval": "15s"}


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """Every sample name a running service exports (counters as `_total`, histograms as
    `_bucket`, `_sum` and `_count`)."""
    url = f"sqlite:///{tmp_path_factory.mktemp('metrics')}/todo.db"
    with TestClient(create_app(make_settings(url)), client=("127.0.0.1", 1)) as client:
        login(client, *ALICE)
        text = client.get("/metrics").text
    return {sample.name for family in text_string_to_metric_families(text) for sample in family.samples}


def promtool(*args: str) -> None:
    require(shutil.which("promtool") is not None, "promtool (Debian's prometheus package)")
    result = subprocess.run(["promtool", *args], capture_output=True, text=True, check=False, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def dashboard_expressions() -> list[str]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    assert expressions
    return expressions


def rule_expressions() -> list[str]:
    rules: dict[str, Any] = yaml.safe_load(ALERTS.read_text())
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


@pytest.mark.parametrize(
    "source", [pytest.param(dashboard_expressions, id="dashboard"), pytest.param(rule_expressions, id="alerts")]
)
def test_only_exported_metrics_are_named(source: Any, exported: set[str]) -> None:
    named = {name for expression in source() for name in _METRIC.findall(expression)}
    assert named, "no asgi_todo metric named"
    assert named <= exported, f"not exported: {sorted(named - exported)}"


@pytest.mark.process
def test_alerting_rules_and_scrape_config_pass_promtool() -> None:
    promtool("check", "rules", str(ALERTS))
    promtool("check", "config", str(SCRAPE))


@pytest.mark.process
def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    """promtool parses each query, as a recording rule, with Grafana's variables filled in."""
    rules = []
    for number, expression in enumerate(dashboard_expressions()):
        for variable, value in _GRAFANA.items():
            expression = expression.replace(variable, value)
        assert "$" not in expression, expression
        rules.append({"record": f"asgi_todo:dashboard_query_{number}", "expr": expression})
    path = tmp_path / "dashboard-rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    promtool("check", "rules", str(path))


def untrusted_proxy_series(instance: str, *, untrusted_per_minute: int) -> list[dict[str, str]]:
    """An instance answering 60 API requests and 200 probes a minute, `untrusted_per_minute`
    of the requests with X-Forwarded-For from a peer it does not trust."""
    requests = f'asgi_todo_http_requests_total{{instance="{instance}", method="GET", status="2xx", route='
    untrusted = f'asgi_todo_forwarded_untrusted_total{{instance="{instance}"}}'
    return [
        {"series": untrusted, "values": f"0+{untrusted_per_minute}x40"},
        {"series": requests + '"/api/todos/"}', "values": "0+60x40"},
        {"series": requests + '"/livez"}', "values": "0+200x40"},
    ]


@pytest.mark.process
def test_the_untrusted_proxy_alert_fires_behind_an_untrusted_proxy_only(tmp_path: Path) -> None:
    """promtool's rule tests: when every request comes with X-Forwarded-For from an untrusted
    peer (a proxy missing from FORWARDED_ALLOW_IPS), AsgiTodoForwardedUntrusted fires after
    10 minutes, probes or not; a client forging the header now and then does not fire it."""
    tests = {
        "rule_files": [str(ALERTS)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    *untrusted_proxy_series("proxied:9464", untrusted_per_minute=60),
                    *untrusted_proxy_series("direct:9464", untrusted_per_minute=2),
                ],
                "alert_rule_test": [
                    {"eval_time": "8m", "alertname": "AsgiTodoForwardedUntrusted", "exp_alerts": []},
                    {
                        "eval_time": "30m",
                        "alertname": "AsgiTodoForwardedUntrusted",
                        "exp_alerts": [
                            {
                                "exp_labels": {"severity": "ticket", "instance": "proxied:9464"},
                                "exp_annotations": {
                                    "summary": "asgi_todo on proxied:9464 does not trust the proxy in front of it",
                                    "description": "100% of its requests carry X-Forwarded-For from a peer not in "
                                    "FORWARDED_ALLOW_IPS; the log names the peer (docs: Proxies).",
                                },
                            }
                        ],
                    },
                ],
            }
        ],
    }
    path = tmp_path / "alerts-test.yaml"
    path.write_text(yaml.safe_dump(tests))
    promtool("test", "rules", str(path))
