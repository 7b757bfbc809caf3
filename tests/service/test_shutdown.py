"""Scale-down and spot preemption, for real: a worker's main process gets SIGTERM (``os.kill``, as Kubernetes
sends it to a container's first process) while its pool process runs a job.

A training gives its job back at once with a resume state saved at the step it is at, and another worker
resumes from that step (not from 0) to the same weights as a run without the signal; a generation that
cannot finish within the grace period is given back and sampled again elsewhere, one that can finishes; a job
stuck in one long step is given back by the worker's main process at the end of the grace, which then exits.
Each attempt given back is not counted against the retry limit. The workers run the engine stand-in
(`tests.service.engine_standin`), which holds a job where the test needs the signal to land.
"""

from __future__ import annotations

import json
import os
import signal
import time

import httpx
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from common.jobstore import JobStore
from scripts.processes import in_group, stop_group, wait_until
from tests.conftest import KEY_A
from tests.service.helpers import RESUMABLE, fault_settings, upload, wait_job, wait_stage, worker_pid
from tests.service.processes import open_gate, start_standin, start_standins
from tests.service.test_faults import adapter_tensors

A = {"Authorization": f"Bearer {KEY_A}"}
pytestmark = [pytest.mark.slow, pytest.mark.heavy]


def sigterm(worker) -> float:
    """SIGTERM to the worker's main process only (its pool process never sees it); the time it was sent."""
    os.kill(worker.pid, signal.SIGTERM)
    return time.monotonic()


def exit_status(worker, sent: float, within: float) -> tuple[int, float]:
    """Wait for the worker to exit, at most `within` s after `sent`: (its exit status, seconds it took)."""
    status = worker.wait(timeout=max(0.1, sent + within - time.monotonic()))
    return status, time.monotonic() - sent


def statuses(store: JobStore, job_id: str) -> list[dict]:
    return [e for e in store.job_log(job_id) if e["type"] == "status"]


def test_sigterm_during_training_saves_the_step_and_another_worker_resumes_it(settings, checkpoints, own_redis,
                                                                             tmp_path):
    """Training held at step 3 of 8 (no periodic state before the end: `train_checkpoint_every` is 1000).
    SIGTERM to its worker: the job is given back with a state of step 3, the worker exits 0 within the grace,
    and the other worker resumes at step 3 and ends with the same loss curve and weights, bit for bit, as the
    same customization without the signal. Then that worker, SIGTERMed while its job is stuck in one step,
    gives the job back itself at the end of the grace and exits."""
    grace = 8.0
    conf = fault_settings(settings, own_redis, tmp_path, train_checkpoint_every=1000, shutdown_grace_s=grace,
                          shutdown_reserve_s=1.0)
    config = {**RESUMABLE, "prompts": ["a photo of sks dog @hold=train:3 @gate=go"], "train_steps": 8}
    workers = start_standins(conf, tmp_path)
    try:
        with TestClient(create_app(conf)) as api:
            storage, store = api.app.state.storage, JobStore(own_redis)
            body = upload(api, A, checkpoints["lora"], config).json()
            job_id, cus_id = body["job_id"], body["customization_id"]
            wait_stage(api, A, job_id, "train")
            wait_until(lambda: "holding at train 3/8" in "".join(w.log_path.read_text() for w in workers), 120,
                       "the training to hold at step 3")
            victim, survivor = workers if in_group(workers[0], worker_pid(own_redis, job_id)) else workers[::-1]
            sent = sigterm(victim)
            status, took = exit_status(victim, sent, grace)
            assert status == 0, victim.log_path.read_text()[-3000:]
            assert took < grace, took
            state = f"customizations/{cus_id}/train-state/"
            assert json.loads(storage.get_bytes(state + "latest.json")) == {"step": 3}  # saved at SIGTERM
            back = [e for e in statuses(store, job_id) if e["status"] == "queued" and "given back" in e["message"]]
            assert len(back) == 1 and "suspended at train step 3/8, its resume state saved" in back[0]["message"], \
                statuses(store, job_id)
            open_gate(tmp_path)

            job = wait_job(api, A, job_id, timeout=300)
            assert job["status"] == "succeeded" and job["attempts"] == 2, job
            assert store.get_job(job_id).given_back == 1
            assert in_group(survivor, worker_pid(own_redis, job_id))
            manifest = api.get(f"/customizations/{cus_id}", headers=A).json()["manifest"]
            assert manifest["resumed_from_step"] == 3 and len(manifest["loss_curve"]) == 8, manifest
            log = [e["message"] for e in store.job_log(job_id)]
            assert "attempt 2 resumes training from step 3 (a stored state)" in log, log
            assert [e["status"] for e in statuses(store, job_id)] == ["queued", "running", "queued", "running",
                                                                      "succeeded"]
            assert storage.list_keys(state) == []

            again = upload(api, A, checkpoints["lora"], config).json()  # the gate is open: no hold
            clean = wait_job(api, A, again["job_id"], timeout=300)
            assert clean["status"] == "succeeded" and clean["attempts"] == 1, clean
            reference = api.get(f"/customizations/{again['customization_id']}", headers=A).json()["manifest"]
            assert reference["resumed_from_step"] == 0 and reference["loss_curve"] == manifest["loss_curve"]
            resumed, expected = adapter_tensors(storage, cus_id), adapter_tensors(storage, again["customization_id"])
            assert resumed.keys() == expected.keys() and resumed
            for name, tensor in expected.items():
                assert (tensor == resumed[name]).all(), name

            stuck = api.post("/generate", headers=A, json={"prompt": "stuck @stall=denoise", "num_frames": 2,
                                                            "height": 32, "width": 32, "steps": 4}).json()["job_id"]
            wait_until(lambda: "stalled at denoise" in survivor.log_path.read_text(), 120, "the job to stall")
            sent = sigterm(survivor)
            status, took = exit_status(survivor, sent, grace + 10)
            assert status != 0 and grace - 0.5 < took < grace + 5, (status, took)  # at the grace's end, not before
            record = store.get_job(stuck)
            assert record.status == "queued" and record.given_back == 1 and record.attempts == 1, record
            assert f"did not stop within {grace:g} s; given back" in statuses(store, stuck)[-1]["message"]
            assert store.redis.llen(conf.generate_queue) == 1  # its task is sent again, for another worker
    finally:
        for worker in workers:
            stop_group(worker)


def test_sigterm_during_sampling_requeues_what_cannot_finish_and_finishes_what_can(settings, own_redis, tmp_path):
    """Worker A (a grace too short for any video) gets SIGTERM mid-denoise: the video is given back at once,
    A exits, worker B samples it from the start (attempt 2, same seed). B (a 60 s grace) then gets SIGTERM
    mid-denoise of a short video: it finishes it (attempt 1), then exits 0."""
    conf = fault_settings(settings, own_redis, tmp_path)
    short = conf.model_copy(update={"workdir": tmp_path / "a", "shutdown_grace_s": 8.0, "shutdown_reserve_s": 7.95})
    worker_a = start_standin(short, tmp_path, "a")
    workers = [worker_a]
    video = {"num_frames": 8, "height": 32, "width": 32, "seed": 5, "format": "gif"}
    try:
        with TestClient(create_app(conf)) as api:
            store = JobStore(own_redis)
            requeued = api.post("/generate", headers=A, json={**video, "prompt": "r @hold=denoise:2 @gate=r",
                                                               "steps": 20}).json()["job_id"]
            wait_until(lambda: "holding at denoise" in worker_a.log_path.read_text(), 120, "the video to hold")
            worker_b = start_standin(conf.model_copy(update={"workdir": tmp_path / "b", "shutdown_grace_s": 60.0,
                                                             "shutdown_reserve_s": 1.0}), tmp_path, "b")
            workers.append(worker_b)
            sent = sigterm(worker_a)
            status, took = exit_status(worker_a, sent, short.shutdown_grace_s)
            assert status == 0 and took < short.shutdown_grace_s, (status, took)
            open_gate(tmp_path, "r")  # for the rerun on B
            job = wait_job(api, A, requeued, timeout=180)
            assert job["status"] == "succeeded" and job["attempts"] == 2, job
            assert store.get_job(requeued).given_back == 1 and in_group(worker_b, worker_pid(own_redis, requeued))
            back = [e["message"] for e in statuses(store, requeued) if e["status"] == "queued"][-1]
            assert "attempt 1's worker is shutting down; suspended at denoise step 2/20; given back" in back, back
            assert job["result"]["seed"] == 5 and httpx.get(job["result"]["video_url"]).content[:6] == b"GIF89a"

            finished = api.post("/generate", headers=A, json={**video, "prompt": "f @hold=denoise:2 @gate=f",
                                                               "steps": 4}).json()["job_id"]
            wait_stage(api, A, finished, "denoise")
            wait_until(lambda: "holding at denoise" in worker_b.log_path.read_text().split("gate r open")[-1], 120,
                       "the second video to hold")
            sent = sigterm(worker_b)
            wait_until(lambda: any("so it finishes here" in e["message"] for e in store.job_log(finished)), 30,
                       "the job to decide that it finishes")
            time.sleep(1.0)
            assert worker_b.poll() is None  # waiting for its job
            assert store.get_job(finished).status == "running"
            open_gate(tmp_path, "f")
            status, took = exit_status(worker_b, sent, 60.0)
            assert status == 0, worker_b.log_path.read_text()[-3000:]
            job = api.get(f"/jobs/{finished}", headers=A).json()
            assert job["status"] == "succeeded" and job["attempts"] == 1 and store.get_job(finished).given_back == 0
    finally:
        for worker in workers:
            stop_group(worker)
