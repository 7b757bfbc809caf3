"""Logs, traces and the worker's metrics across real processes: the API under uvicorn (``python -m api``) and a
Celery worker, each with its JSON logs in a file and tracing on through the standard variables
(``OTEL_TRACES_EXPORTER=otlp`` to an OTLP/HTTP receiver in this test that decodes the protobuf spans), on a Redis
of their own; one generation sent with an ``X-Request-ID``. Then: the request id, job id and owner hash in both
processes' records; one trace from the request through the enqueue and the task to the engine's stages; the
worker's metrics port counting that job's steps; the Grafana dashboard querying only metrics these scrapes have.
"""

from __future__ import annotations

import json
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from prometheus_client.parser import text_string_to_metric_families

from api.auth import owner_of
from scripts import processes
from scripts.processes import ROOT, free_port, start_redis, stop_group, wait_until
from tests.conftest import KEY_A
from tests.service.processes import start_worker

A = {"Authorization": f"Bearer {KEY_A}"}
VIDEO = {"prompt": "a traced one", "num_frames": 2, "height": 32, "width": 32, "steps": 3, "seed": 7, "format": "gif"}
REQUEST_ID = "obs-test-request-1"
DASHBOARD = ROOT / "deploy" / "grafana" / "stillmoving.json"


class OtlpReceiver:
    """An OTLP/HTTP traces endpoint on loopback: keeps every span posted to ``/v1/traces``, with its service."""

    def __init__(self):
        self.spans: dict[str, dict] = {}  # by span id: an exporter that timed out sends its batch again
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                request = ExportTraceServiceRequest.FromString(self.rfile.read(int(self.headers["Content-Length"])))
                for resource_spans in request.resource_spans:
                    service = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                    for scope_spans in resource_spans.scope_spans:
                        for span in scope_spans.spans:
                            receiver.spans[span.span_id.hex()] = ({
                                "service": service.get("service.name"), "name": span.name,
                                "trace_id": span.trace_id.hex(), "span_id": span.span_id.hex(),
                                "parent": span.parent_span_id.hex(),
                                "attributes": {a.key: a.value for a in span.attributes}})
                body = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def json_records(path: Path, after: str | None = None) -> list[dict]:
    """The log file's lines as JSON objects: every line, or every line after the first record whose message
    contains `after` (a Celery worker prints its banner before logging starts). Fails on a line that is not one."""
    lines = path.read_text().splitlines()
    if after is not None:
        start = next(i for i, line in enumerate(lines) if line.startswith("{") and after in json.loads(line)["message"])
        lines = lines[start:]
    records = []
    for line in lines:
        record = json.loads(line)  # one JSON object a line
        assert isinstance(record, dict) and {"time", "level", "logger", "message"} <= record.keys(), line
        records.append(record)
    return records


@pytest.fixture(scope="module")
def stack(settings, tmp_path_factory):
    tmp, redis_port = tmp_path_factory.mktemp("observability"), free_port()
    redis_proc = start_redis(redis_port, tmp)
    receiver = OtlpReceiver()
    conf = settings.model_copy(update={
        "redis_url": f"redis://127.0.0.1:{redis_port}/0", "api_port": free_port(),
        "worker_metrics_port": free_port(), "workdir": tmp / "worker", "log_format": "json", "log_level": "INFO"})
    otel = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": receiver.url,
            "OTEL_BSP_SCHEDULE_DELAY": "100"}
    url = f"http://{conf.api_host}:{conf.api_port}"
    api_log, worker_log = tmp / "api.log", tmp / "worker.log"
    with ThreadPoolExecutor(2) as pool:  # start both at once: the worker's start is the slow part
        api_start = pool.submit(processes.start_api, processes.service_env({**conf.to_env(), **otel}), url, api_log)
        worker_start = pool.submit(start_worker, conf, worker_log, "obs", **otel)
        api_proc, worker_proc = api_start.result(), worker_start.result()
    try:
        with httpx.Client(base_url=url, timeout=30) as http:
            accepted = http.post("/generate", headers={**A, "X-Request-ID": REQUEST_ID}, json=VIDEO)
            assert accepted.status_code == 202, accepted.text
            job_id = accepted.json()["job_id"]
            job = wait_until(lambda: (j := http.get(f"/jobs/{job_id}", headers=A).json())["status"] in
                             ("succeeded", "failed") and j, 300, "the traced job to end")
            assert job["status"] == "succeeded", job
            yield SimpleNamespace(conf=conf, url=url, accepted=accepted, job=job, receiver=receiver,
                                  api_log=api_log, worker_log=worker_log,
                                  worker_metrics=f"http://127.0.0.1:{conf.worker_metrics_port}/metrics")
    finally:
        for proc in (api_proc, worker_proc, redis_proc):
            stop_group(proc)
        receiver.server.shutdown()


@pytest.mark.slow
def test_logs_are_json_lines_carrying_the_request_id_from_the_api_into_the_worker(stack):
    job_id, owner = stack.job["id"], owner_of(KEY_A)
    assert stack.accepted.headers["x-request-id"] == REQUEST_ID
    api_records = json_records(stack.api_log)
    access = [r for r in api_records if r["logger"] == "stillmoving.access" and r.get("route") == "/generate"]
    assert len(access) == 1, access
    assert access[0] | {"request_id": REQUEST_ID, "job_id": job_id, "owner": owner, "status": 202} == access[0]
    assert re.fullmatch(r"[0-9a-f]{32}", access[0]["trace_id"])
    wait_until(lambda: f"job {job_id} succeeded" in stack.worker_log.read_text(), 30, "the worker's end record")
    worker_records = json_records(stack.worker_log, after="ready.")
    of_job = [r for r in worker_records if r.get("job_id") == job_id]
    assert any(r["message"] == f"job {job_id} succeeded" for r in of_job), of_job
    assert {(r["request_id"], r["owner"]) for r in of_job} == {(REQUEST_ID, owner)}
    assert {r["trace_id"] for r in of_job if "trace_id" in r} == {access[0]["trace_id"]}
    for path in (stack.api_log, stack.worker_log):
        assert KEY_A not in path.read_text()  # the owner is the key's hash, never the key


@pytest.mark.slow
def test_one_trace_from_the_request_through_the_task_to_the_engine_stages(stack):
    def request_span() -> dict | None:
        return next((s for s in list(stack.receiver.spans.values()) if s["name"] == "POST /generate" and
                     s["attributes"]["stillmoving.request_id"].string_value == REQUEST_ID), None)

    def trace_of_job() -> list[dict]:
        request = request_span()
        spans = [s for s in list(stack.receiver.spans.values()) if request and s["trace_id"] == request["trace_id"]]
        return spans if {"stage export", "stage upload"} <= {s["name"] for s in spans} else []

    trace = wait_until(trace_of_job, 60, "the job's spans to be exported")
    request = request_span()
    assert request is not None
    by_name = {s["name"]: s for s in trace}
    assert {"POST /generate", "enqueue generate", "task stillmoving.generate", "job generate", "stage load",
            "stage denoise", "stage export", "stage upload"} <= by_name.keys(), sorted(by_name)
    assert request["service"] == "stillmoving-api" and request["parent"] == ""  # FastAPI's server span
    spans = {s["span_id"]: s for s in trace}

    def ancestors(span: dict) -> list[str]:
        chain = []
        while span["parent"]:
            span = spans[span["parent"]]
            chain.append(span["span_id"])
        return chain

    assert request["span_id"] in ancestors(by_name["enqueue generate"])  # through FastAPI's endpoint span
    assert by_name["task stillmoving.generate"]["parent"] == by_name["enqueue generate"]["span_id"]
    assert by_name["task stillmoving.generate"]["service"] == "stillmoving-worker"
    assert by_name["job generate"]["parent"] == by_name["task stillmoving.generate"]["span_id"]
    for stage in ("load", "denoise", "export", "upload"):
        assert by_name[f"stage {stage}"]["parent"] == by_name["job generate"]["span_id"], stage
    assert by_name["job generate"]["attributes"]["stillmoving.job_id"].string_value == stack.job["id"]
    assert by_name["stage denoise"]["attributes"]["stillmoving.steps"].int_value == VIDEO["steps"]


def scrape(url: str, **kwargs) -> list:
    response = httpx.get(url, timeout=10, **kwargs)
    assert response.status_code == 200, response.text
    return [sample for family in text_string_to_metric_families(response.text) for sample in family.samples]


@pytest.mark.slow
def test_the_worker_serves_its_pool_processes_metrics(stack):
    samples = scrape(stack.worker_metrics)
    values = {(s.name, tuple(sorted((k, v) for k, v in s.labels.items() if k != "pid"))): s.value for s in samples}
    assert values[("stillmoving_worker_steps_total", (("kind", "generate"), ("stage", "denoise")))] == VIDEO["steps"]
    assert values[("stillmoving_worker_stage_seconds_count", (("kind", "generate"), ("stage", "denoise")))] == 1
    assert values[("stillmoving_worker_cache_requests_total", (("cache", "base"), ("result", "miss")))] == 1
    assert values[("stillmoving_worker_jobs_running", (("kind", "generate"),))] == 0
    rss = [s for s in samples if s.name == "stillmoving_worker_device_memory_bytes" and s.labels["device"] == "cpu"]
    assert rss and all(s.value > 50 * 2**20 for s in rss), rss  # the pool process holds torch and the models
    assert {s.labels["pid"] for s in rss} and all(s.labels["pid"].isdigit() for s in rss)


def queried_metrics(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: its identifiers once strings, label matchers, ranges and
    grouping clauses are removed, less functions (an identifier before "(") and keywords."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    names = set(re.findall(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()", expr))
    return names - {"and", "or", "unless", "bool", "offset", "inf", "nan"}


@pytest.mark.slow
def test_the_dashboard_queries_only_metrics_that_a_real_scrape_has(stack):
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 15
    queried = set().union(*map(queried_metrics, exprs))
    assert len(queried) >= 20, queried
    served = {s.name for s in scrape(stack.worker_metrics) + scrape(f"{stack.url}/metrics")}
    assert queried - served == set(), queried - served
    assert queried_metrics('sum by (le, route) (rate(a_b_bucket{route="/x/{id}"}[5m])) / max(c)') == {"a_b_bucket",
                                                                                                        "c"}

