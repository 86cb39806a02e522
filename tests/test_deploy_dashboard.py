"""The Grafana dashboard asks only for metrics, labels and label values the service really exports.

The reference is a live scrape: a fresh interpreter puts StyleCast's metrics in multi-process mode
(as `stylecast serve` does), records one sample in every metric family through the real helpers,
and serves `create_app` with `ApiServer`; the test reads `/metrics` over HTTP.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[1]
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "stylecast.json"

_SERVE_SCRIPT = r"""
import json, sys
from shared.metrics import STAGES, LATENCY_STAGES, get_metrics, init_metrics_dir
init_metrics_dir(sys.argv[1], fresh=True)
m = get_metrics()
for stage in STAGES:
    for outcome in ("processed", "dropped_queue_full", "error"):
        m.count_frames("cam", stage, outcome)
m.observe_latencies("cam", t_capture=0.0, t_ingest=0.01, t_batch_start=0.02, t_side_done=0.03, t_main_done=0.04, t_egress_done=0.05)
m.batch_size.labels("cuda:0").observe(8)
for path in ("side", "main"):
    m.batch_wall.labels("cuda:0", path).observe(0.02)
m.main_idle.labels("cuda:0").observe(0.0001)
for reason in ("no_frames", "filling", "in_flight", "output_full"):
    m.dispatch_wait.labels("cuda:0", reason).inc(0.5)
m.queue_depth.labels("cam", "gpu").set(3)
m.set_stream_state("cam", "running")
m.prompt_version.labels("cam").set(1)
m.cond_refreshes.labels("cam", "scheduled").inc()
m.text_encoder_cache.labels("prefix", "hit").inc()
m.process_restarts.labels("gpu").inc()
for kind in ("allocated", "reserved"):
    m.gpu_memory.labels("cuda:0", kind).set(2**30)
m.count_rejected("gpu", "too_large")

from services.api.app import create_app
from services.api.server import ApiServer
from shared.settings import ServiceSettings
from tests.test_api import FakeControl
families = sorted(f.name for f in m.registry.collect())
with ApiServer(create_app(FakeControl(), ServiceSettings(runtime_dir=sys.argv[2])), "127.0.0.1", 0) as server:
    print(json.dumps({"url": server.url, "families": families}), flush=True)
    sys.stdin.read()  # serve until the test closes our stdin
"""


@pytest.fixture(scope="module")
def scrape(tmp_path_factory) -> dict:
    """{sample name: {label name: {values}}} from a live /metrics, plus the families the registry defines."""
    tmp = tmp_path_factory.mktemp("metrics")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    proc = subprocess.Popen([sys.executable, "-c", _SERVE_SCRIPT, str(tmp / "metrics"), str(tmp / "rt")], cwd=REPO, env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stdout.readline()
        assert first, proc.stderr.read()
        started = json.loads(first)
        text = httpx.get(started["url"] + "/metrics", timeout=10).text
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)
    samples: dict[str, dict[str, set[str]]] = {}
    family_names = set()
    for family in text_string_to_metric_families(text):
        family_names.add(family.name)
        for sample in family.samples:
            labels = samples.setdefault(sample.name, {})
            for key, value in sample.labels.items():
                labels.setdefault(key, set()).add(value)
    return {"samples": samples, "families": family_names, "defined": set(started["families"])}


def _exprs() -> list[tuple[str, str, str]]:
    """(panel title, expression, legend format) of every query of the dashboard."""
    dashboard = json.loads(DASHBOARD.read_text())
    found = [(p["title"], t["expr"], t.get("legendFormat", "")) for p in dashboard["panels"] for t in p["targets"]]
    for variable in dashboard["templating"]["list"]:
        found.append((f"variable {variable['name']}", variable["query"]["query"], ""))
    return found


_METRIC_RE = re.compile(r"\b(stylecast_[a-z0-9_]+)\b(\{[^}]*\})?")
_MATCHER_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!=|!~|=)\s*"([^"]*)"')
_BY_RE = re.compile(r"\bby\s*\(([^)]*)\)")


def test_the_scrape_covers_every_metric_family(scrape) -> None:
    # Otherwise a dashboard query could point at a family this test never made appear.
    assert scrape["defined"] <= scrape["families"], scrape["defined"] - scrape["families"]
    assert len(scrape["defined"]) >= 12


def test_dashboard_is_valid_json_with_the_required_panels() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"] == "StyleCast"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    text = " ".join(expr for _, expr, _ in _exprs())
    for needed in ("stylecast_frames_total", "stylecast_end_to_end_latency_seconds_bucket", "stylecast_gpu_batch_size",
                   "stylecast_gpu_batch_wall_seconds", "stylecast_gpu_memory_bytes", "stylecast_process_restarts_total"):
        assert needed in text, needed
    assert "histogram_quantile(0.5" in text and "histogram_quantile(0.95" in text


def _query_problems(title: str, expr: str, legend: str, samples: dict) -> list[str]:
    """What is wrong with one query against the scrape: unknown metrics, labels, label values, groupings."""
    problems = []
    metrics = _METRIC_RE.findall(expr)
    if not metrics:
        problems.append(f"{title}: no StyleCast metric in {expr!r}")
    labels_available = set()
    for name, matchers in metrics:
        if name not in samples:
            problems.append(f"{title}: {name} is not exported")
            continue
        labels_available |= set(samples[name])
        for label, op, value in _MATCHER_RE.findall(matchers):
            if label not in samples[name]:
                problems.append(f"{title}: {name} has no label {label!r}")
            elif op == "=" and value not in samples[name][label]:
                problems.append(f"{title}: {name}{{{label}={value!r}}} never occurs (values: {sorted(samples[name][label])})")
            elif op == "=~" and not value.startswith("$") and not any(re.fullmatch(value, v) for v in samples[name][label]):
                problems.append(f"{title}: {name}{{{label}=~{value!r}}} matches no value")
    grouped = set()
    for group in _BY_RE.findall(expr):
        for label in filter(None, (part.strip() for part in group.split(","))):
            grouped.add(label)
            if label not in labels_available:
                problems.append(f"{title}: 'by ({label})' but no metric of the query has that label")
    for label in re.findall(r"\{\{\s*(\w+)\s*\}\}", legend):
        if label not in grouped:
            problems.append(f"{title}: legend {{{{{label}}}}} is not kept by the query's aggregation")
    return problems


def test_every_query_uses_real_metrics_labels_and_values(scrape) -> None:
    problems = [p for title, expr, legend in _exprs() for p in _query_problems(title, expr, legend, scrape["samples"])]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(("expr", "legend", "expected"), [
    ('sum by (stream) (rate(stylecast_frame_total[1m]))', "", "stylecast_frame_total is not exported"),
    ('sum by (path) (rate(stylecast_frames_total[1m]))', "", "'by (path)'"),
    ('rate(stylecast_frames_total{stage="output"}[1m])', "", "never occurs"),
    ('rate(stylecast_frames_total{camera="x"}[1m])', "", "has no label 'camera'"),
    ('rate(stylecast_frames_total{outcome=~"lost_.*"}[1m])', "", "matches no value"),
    ('sum by (stream) (rate(stylecast_frames_total[1m]))', "{{stage}}", "legend {{stage}}"),
    ('sum(up)', "", "no StyleCast metric"),
])
def test_the_checker_catches_wrong_queries(scrape, expr: str, legend: str, expected: str) -> None:
    problems = _query_problems("panel", expr, legend, scrape["samples"])
    assert any(expected in p for p in problems), problems
