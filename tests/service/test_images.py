"""The images as they will run, without Docker: for each Dockerfile, a folder holding exactly what its COPY lines
bring, a fresh virtualenv with what its `pip install` lines install (offline, from the local wheels; the worker's
torch as the CPU build of the same version), and its CMD started from that folder alone (its ENV, nothing
of the repo): the API answers /healthz, /readyz, /ui/ and /docs; the worker answers its Kubernetes probe
(`celery inspect ping` for its own node) through a loopback Redis and makes a video the API image queued.
Then `pip install` of the project's wheel: a fresh venv imports it and finds its package data."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from scripts.processes import ROOT, await_ready, await_worker, free_port, spawn, stop_group
from tests.conftest import KEY_A
from tests.service import images, kube
from tests.service.helpers import wait_job

pytestmark = [pytest.mark.slow, pytest.mark.heavy]
AUTH = {"Authorization": f"Bearer {KEY_A}"}
API = images.read_image(ROOT / "Dockerfile.api")
WORKER = images.read_image(ROOT / "Dockerfile.worker")


def build(image: images.Image, top: Path) -> tuple[Path, Path]:
    """The image's files under ``top/rootfs`` and its venv in ``top/venv``; returns (workdir, venv python)."""
    started = time.monotonic()
    workdir = images.build_tree(image, top / "rootfs")
    python = images.fresh_venv(top / "venv")
    args = [*image.packages, *(a for r in image.requirements for a in ("-r", r)), "-c", str(images.CPU_CONSTRAINTS)]
    images.install_offline(python, args, top / "pip.log", workdir)
    print(f"{top.name}: files and venv in {time.monotonic() - started:.1f} s")
    return workdir, python


@pytest.fixture(scope="module")
def service_env(redis_url, s3_endpoint, tmp_path_factory) -> dict[str, str]:
    """The settings both images run with here: loopback Redis and S3, the shapes world (the images' default)."""
    return {"STILLMOVING_REDIS_URL": redis_url, "STILLMOVING_S3_ENDPOINT_URL": s3_endpoint,
            "STILLMOVING_S3_BUCKET": "stillmoving-images", "STILLMOVING_S3_ACCESS_KEY_ID": "test",
            "STILLMOVING_S3_SECRET_ACCESS_KEY": "test", "STILLMOVING_API_KEYS": KEY_A,
            "STILLMOVING_MODEL_PRESET": "shapes", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def api_image(service_env, tmp_path_factory):
    top = tmp_path_factory.mktemp("api-image")
    workdir, python = build(API, top)
    port = free_port()
    env = images.image_env(API, top / "rootfs", python.parent.parent, **service_env,
                           STILLMOVING_API_HOST="127.0.0.1", STILLMOVING_API_PORT=str(port))
    url = f"http://127.0.0.1:{port}"
    proc = spawn(API.cmd, top / "api.log", env, cwd=workdir)
    await_ready(proc, lambda: httpx.get(url + "/healthz", timeout=2).status_code == 200, 60, "the API image",
                top / "api.log")
    yield url, python, workdir
    stop_group(proc)


def test_api_image_starts_and_serves_the_page_and_docs(api_image):
    url, python, workdir = api_image
    assert httpx.get(url + "/healthz").json() == {"status": "ok"}
    assert httpx.get(url + "/readyz").json()["status"] == "ready"  # Redis and S3 through the image's clients
    page = httpx.get(url + "/ui/")
    assert page.status_code == 200 and page.text == (ROOT / "ui" / "index.html").read_text()
    assert httpx.get(url + "/ui/app.js").status_code == 200
    docs = httpx.get(url + "/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    assert "/generate" in httpx.get(url + "/openapi.json").json()["paths"]
    queued = httpx.post(url + "/generate", headers=AUTH, json={"prompt": "a blue square", "steps": 2})
    assert queued.status_code == 202, queued.text  # the Celery message sent (kombu's Redis transport imported)
    assert httpx.post(f"{url}/jobs/{queued.json()['job_id']}/cancel", headers=AUTH).json()["status"] == "canceled"
    assert sorted(p.name for p in workdir.iterdir()) == ["api", "common", "requirements", "ui"]
    torch = subprocess.run([str(python), "-c", "import torch"], capture_output=True, cwd=workdir)
    assert torch.returncode != 0, "the API image must not carry torch"


def worker_probe(kind: str) -> list[str]:
    """The exec command of a worker Deployment's probe in deploy/kubernetes."""
    rendered = kube.render(kube.KUBERNETES / "base")
    deployment = next(d for d in kube.find(rendered, "Deployment") if d["metadata"]["name"] != "api")
    return kube.container(deployment)[kind]["exec"]["command"]


def test_worker_image_answers_its_probe_and_makes_a_video(api_image, service_env, tmp_path_factory):
    url = api_image[0]
    top = tmp_path_factory.mktemp("worker-image")
    workdir, python = build(WORKER, top)
    assert {"common", "engine", "worker", "models"} <= {p.name for p in workdir.iterdir()}
    metrics_port = free_port()  # the image's metrics host (all addresses), a port of this test's
    env = images.image_env(WORKER, top / "rootfs", python.parent.parent, **service_env,  # /cache: under rootfs
                           STILLMOVING_WORKER_METRICS_PORT=str(metrics_port))
    assert WORKER.cmd[0] == "celery" and "-Q" in WORKER.cmd
    started = time.monotonic()
    proc = await_worker(spawn(WORKER.cmd, top / "worker.log", env, cwd=workdir), top / "worker.log", 180)
    print(f"worker image: ready in {time.monotonic() - started:.1f} s")
    probe_env = {**env, "HOSTNAME": socket.gethostname()}  # as a pod's: its host name, the node's name
    try:
        for kind in ("readinessProbe", "livenessProbe"):
            ping = subprocess.run(worker_probe(kind), cwd=workdir, env=probe_env, capture_output=True, text=True,
                                  timeout=60)
            assert ping.returncode == 0 and "pong" in ping.stdout, ping.stdout + ping.stderr
        job = httpx.post(url + "/generate", headers=AUTH, json={"prompt": "a red circle moving left", "steps": 2,
                                                                "format": "gif"})
        assert job.status_code == 202, job.text
        with httpx.Client(base_url=url) as client:
            done = wait_job(client, AUTH, job.json()["job_id"], timeout=240)
        assert done["status"] == "succeeded", done
        assert httpx.get(done["result"]["video_url"]).content[:6] == b"GIF89a"
        scraped = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text  # its pool's, through the main process
        steps = [line for line in scraped.splitlines() if line.startswith("stillmoving_worker_steps_total{")]
        assert steps and sum(float(line.rsplit(" ", 1)[1]) for line in steps) >= 2, scraped[-2000:]
    finally:
        stop_group(proc, timeout=30)
    dead = subprocess.run(worker_probe("livenessProbe"), cwd=workdir, env=probe_env, capture_output=True, timeout=60)
    assert dead.returncode != 0, "the probe must fail once the worker is gone"


def test_the_wheel_installs_with_its_dependencies_and_package_data(tmp_path):
    """`pip install` of the wheel built from the tracked files (the API's dependencies; the engine's are the
    `engine` extra): it imports from site-packages, not from the repo, and finds its data there."""
    source = tmp_path / "source"
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in tracked.decode().split("\0"):
        if name and (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "dist"), str(source)], check=True, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("stillmoving-*.whl")
    python = images.fresh_venv(tmp_path / "venv")
    images.install_offline(python, [str(wheel)], tmp_path / "pip.log", tmp_path)
    check = """if True:
        import json, importlib.util, pathlib
        import api.app, common.presets, client.main, worker.celery_app
        from common.checkpoint_header import load_base_keys
        site = pathlib.Path(api.app.__file__).parents[1]
        engine = pathlib.Path(importlib.util.find_spec("engine").origin).parent  # found, not imported (torch)
        print(json.dumps({
            "site": str(site), "ui": (api.app.UI_DIR / "index.html").is_file(),
            "keys": {k: len(v) for k, v in load_base_keys("shapes").items()},
            "configs": sorted(p.name for p in (engine / "configs" / "sd15").iterdir()),
            "canny": (common.presets.SHAPES_CONTROLNET_CANNY / "config.json").is_file(),
            "shapes": sorted(p.name for p in (site / "models" / "shapes").iterdir())}))
    """
    out = subprocess.run([str(python), "-c", check], cwd=tmp_path, capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert out.returncode == 0, out.stderr
    found = json.loads(out.stdout)
    assert found["site"].startswith(str(tmp_path / "venv")), found
    assert found["ui"] and found["canny"], found
    from common.checkpoint_header import load_base_keys

    assert found["keys"] == {k: len(v) for k, v in load_base_keys("shapes").items()}
    assert found["configs"] == sorted(p.name for p in (ROOT / "engine" / "configs" / "sd15").iterdir())
    assert found["shapes"] == sorted(p.name for p in (ROOT / "models" / "shapes").iterdir())
    for script in ("stillmoving", "stillmoving-api"):
        assert (tmp_path / "venv" / "bin" / script).is_file(), script
    usage = subprocess.run([str(tmp_path / "venv" / "bin" / "stillmoving"), "--help"], capture_output=True, text=True)
    assert usage.returncode == 0 and "generate" in usage.stdout, usage.stderr
