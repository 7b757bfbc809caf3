"""Live API servers (uvicorn subprocesses) for real HTTP clients: the session's, over its Redis, S3 and tiny
worker; and one on the `shapes` preset with its own worker and queues, for the browser's whole flow.
Plus headless Chromium (Debian's, driven by Playwright) and the page on a customization the tests share."""

from __future__ import annotations

import json
import shutil
import subprocess
import time

import httpx
import pytest

from scripts.processes import PYTHON, ROOT, free_port, stop_group
from tests.conftest import KEY_A
from tests.service.processes import start_api, start_worker

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--autoplay-policy=no-user-gesture-required"]
AUTH_A = {"Authorization": f"Bearer {KEY_A}"}


@pytest.fixture(scope="session")
def api_url(settings, worker, tmp_path_factory):
    conf = settings.model_copy(update={"api_host": "127.0.0.1", "api_port": free_port()})
    proc = start_api(conf, tmp_path_factory.mktemp("api") / "api.log")
    yield f"http://{conf.api_host}:{conf.api_port}"
    stop_group(proc)


@pytest.fixture(scope="module")
def shapes_api_url(settings, tmp_path_factory):
    """The API and a worker on the shapes preset (the committed world), with a Motion Adapter of a few steps."""
    logs = tmp_path_factory.mktemp("shapes-stack")
    conf = settings.model_copy(update={
        "model_preset": "shapes", "train_queue": "train-ui-shapes", "generate_queue": "generate-ui-shapes",
        "workdir": logs / "worker", "motion_train_steps": 8, "motion_num_images": 2,
        "api_host": "127.0.0.1", "api_port": free_port()})
    worker = start_worker(conf, logs / "worker.log", "ui-shapes")
    api = start_api(conf, logs / "api.log")
    yield f"http://{conf.api_host}:{conf.api_port}"
    stop_group(api)
    stop_group(worker)


@pytest.fixture(scope="session")
def shapes_checkpoint(tmp_path_factory):
    """The shapes world's customized LoRA (`sks`: the object's upper half white), made by the engine's CLI."""
    path = tmp_path_factory.mktemp("shapes-ckpt") / "two-tone-lora.safetensors"
    subprocess.run([PYTHON, "-m", "engine", "make-checkpoint", "--format", "lora", str(path)], cwd=ROOT, check=True,
                   capture_output=True)
    return path


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.fail("chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        launched = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


OPEN_PAGES: list = []  # pages `open_page` opened in the running test; `close_pages` closes them after it


@pytest.fixture(autouse=True)
def close_pages():
    """Close every page a test opened: an open page keeps playing its looping videos and polling the API, and a
    module's worth of them slowed later page loads past Playwright's 30 s (1 s per goto at first, 3 s after six)."""
    yield
    while OPEN_PAGES:
        OPEN_PAGES.pop().context.close()


def open_page(browser, url: str, width: int = 1280, height: int = 1000, path: str = ""):
    """The page at `url`/ui/ with key A entered (closed after the test: `close_pages`). It runs under its CSP (no
    eval); Playwright's string predicates need eval, so only they bypass it."""
    page = browser.new_page(viewport={"width": width, "height": height}, bypass_csp=True)
    OPEN_PAGES.append(page)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.errors = errors
    page.goto(f"{url}/ui/{path}")
    page.fill("#api-key", KEY_A)
    page.dispatch_event("#api-key", "change")
    page.wait_for_selector("#generate-form [data-field='prompt']")
    return page


def wait_job(client: httpx.Client, job_id: str, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/jobs/{job_id}").json()
        if job["status"] in ("succeeded", "failed", "canceled"):
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.2)


@pytest.fixture(scope="module")
def studio(api_url, checkpoints):
    """On the tiny preset, through the API: a trained customization, a comparison and a generation of it.
    Returns (the customization as GET shows it, the evaluate job, the generate job)."""
    with httpx.Client(base_url=api_url, headers=AUTH_A, timeout=60) as client:
        config = {"name": "studio", "prompts": ["a sks toy", "a sks toy on a table"], "num_images": 2,
                  "train_steps": 5, "rank": 4, "seed": 2}
        with open(checkpoints["lora"], "rb") as handle:
            response = client.post("/customizations", files={"checkpoint": ("lora.safetensors", handle)},
                                   data={"config": json.dumps(config)})
        assert response.status_code == 202, response.text
        accepted = response.json()
        evaluation = client.post("/evaluations", json={"customization_id": accepted["customization_id"],
                                                       "prompt": "a sks toy", "seed": 3, "steps": 2})
        generation = client.post("/generate", json={"customization_id": accepted["customization_id"],
                                                    "prompt": "a sks toy moving", "seed": 4, "steps": 2})
        assert evaluation.status_code == 202 and generation.status_code == 202, (evaluation.text, generation.text)
        jobs = [wait_job(client, r.json()["job_id"]) for r in (response, evaluation, generation)]
        assert all(j["status"] == "succeeded" for j in jobs), jobs
        customization = client.get(f"/customizations/{accepted['customization_id']}").json()
    return customization, jobs[1], jobs[2]
