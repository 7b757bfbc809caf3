"""A live API server (uvicorn subprocess) over the session's Redis, S3 and worker, for real HTTP clients."""

from __future__ import annotations

import os
import subprocess
import urllib.request

import pytest

from tests.conftest import PYTHON, ROOT, free_port, stop, wait_until


@pytest.fixture(scope="session")
def api_url(settings, worker, tmp_path_factory):
    port = free_port()
    env = {**os.environ, **settings.to_env(), "PYTHONPATH": str(ROOT), "STILLMOVING_API_HOST": "127.0.0.1",
           "STILLMOVING_API_PORT": str(port)}
    log = open(tmp_path_factory.mktemp("api") / "api.log", "wb")
    proc = subprocess.Popen([PYTHON, "-m", "api"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: urllib.request.urlopen(url + "/healthz", timeout=2).status == 200, 60, "API server")
    yield url
    stop(proc)
