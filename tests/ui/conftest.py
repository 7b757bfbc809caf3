"""A live API server (uvicorn subprocess) over the session's Redis, S3 and worker, for real HTTP clients."""

from __future__ import annotations

import pytest

from scripts.processes import free_port, stop_group
from tests.service.processes import start_api


@pytest.fixture(scope="session")
def api_url(settings, worker, tmp_path_factory):
    conf = settings.model_copy(update={"api_host": "127.0.0.1", "api_port": free_port()})
    proc = start_api(conf, tmp_path_factory.mktemp("api") / "api.log")
    yield f"http://{conf.api_host}:{conf.api_port}"
    stop_group(proc)
