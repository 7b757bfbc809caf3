"""The `stillmoving` command-line client against a live API, worker, Redis and S3."""

from __future__ import annotations

import json
import os
import subprocess
import zipfile
from pathlib import Path

from scripts.processes import PYTHON, ROOT
from tests.conftest import KEY_A, KEY_B

CONSOLE_SCRIPT = Path(PYTHON).parent / "stillmoving"  # installed by `make venv` (pip install -e .)


def stillmoving(api_url, *args, key=KEY_A, timeout=300):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "STILLMOVING_URL": api_url, "STILLMOVING_API_KEY": key}
    return subprocess.run([str(CONSOLE_SCRIPT), *map(str, args)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_customize_generate_and_list_end_to_end(api_url, checkpoints, tmp_path):
    made = stillmoving(api_url, "customize", checkpoints["lora"], "--prompt", "a sks toy", "--num-images", "2",
                       "--train-steps", "3", "--num-frames", "4", "--height", "32", "--width", "32", "--name", "cli")
    assert made.returncode == 0, made.stderr
    customization = json.loads(made.stdout)
    assert customization["status"] == "ready" and customization["name"] == "cli"
    assert "upload" in made.stderr and "customize:" in made.stderr  # the upload bar and stage bars

    out = tmp_path / "v.mp4"
    gen = stillmoving(api_url, "generate", "--customization", customization["id"], "--prompt", "a sks toy",
                      "--num-frames", "4", "--steps", "2", "--seed", "3", "-o", out)
    assert gen.returncode == 0, gen.stderr
    from engine.export import read_video

    assert read_video(out).shape == (4, 32, 32, 3)

    exported = stillmoving(api_url, "export", customization["id"], "--format", "comfyui", "-o", tmp_path,
                           "--include-checkpoint")
    assert exported.returncode == 0, exported.stderr
    bundle, checkpoint = map(Path, exported.stdout.split())
    assert bundle == tmp_path / "cli-comfyui.zip" and zipfile.is_zipfile(bundle)  # its sha256 checked by the CLI
    assert checkpoint.read_bytes() == checkpoints["lora"].read_bytes()
    facts = json.loads(stillmoving(api_url, "export", customization["id"], "--format", "kohya", "--url-only").stdout)
    assert facts["url"].startswith("http") and facts["filename"] == "cli-kohya.safetensors"

    listed = json.loads(stillmoving(api_url, "customizations").stdout)
    assert customization["id"] in [c["id"] for c in listed["items"]]
    jobs = json.loads(stillmoving(api_url, "jobs").stdout)["items"]
    assert [j["kind"] for j in jobs[:2]] == ["generate", "customize"]
    one = json.loads(stillmoving(api_url, "job", jobs[0]["id"]).stdout)
    assert one["status"] == "succeeded"


def test_errors_print_the_server_message_and_exit_non_zero(api_url, tmp_path):
    missing = stillmoving(api_url, "job", "does-not-exist")
    assert missing.returncode == 1 and "not" in missing.stderr.lower() and "404" in missing.stderr
    bad = stillmoving(api_url, "generate", "--prompt", "x", "--height", "30", "-o", tmp_path / "v.mp4")
    assert bad.returncode == 1 and "height" in bad.stderr
    wrong_key = stillmoving(api_url, "jobs", key="nope")
    assert wrong_key.returncode == 1 and "401" in wrong_key.stderr
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 100)
    junk = stillmoving(api_url, "customize", tmp_path / "junk.safetensors", "--prompt", "x")
    assert junk.returncode == 1 and "checkpoint" in junk.stderr


def test_cancel_stops_a_job(api_url):
    import time

    import httpx

    job = httpx.post(f"{api_url}/generate", headers={"Authorization": f"Bearer {KEY_B}"},
                     json={"prompt": "slow one", "num_frames": 16, "steps": 50, "height": 64, "width": 64}).json()
    result = stillmoving(api_url, "cancel", job["job_id"], key=KEY_B)
    assert result.returncode == 0, result.stderr
    deadline = time.monotonic() + 60
    while True:
        final = json.loads(stillmoving(api_url, "job", job["job_id"], key=KEY_B).stdout)
        if final["status"] in ("succeeded", "failed", "canceled") or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert final["status"] == "canceled"


def test_customize_sends_only_what_the_user_set():
    """The server's schema holds the defaults; a client that restated them would drift from it."""
    from client.main import build_parser, customize_config

    bare = build_parser().parse_args(["customize", "ck.safetensors", "--prompt", "a sks toy"])
    assert customize_config(bare) == {"prompts": ["a sks toy"]}
    full = build_parser().parse_args(["customize", "ck.safetensors", "--prompt", "a", "--num-images", "3",
                                      "--train-steps", "7", "--seed", "0"])
    assert customize_config(full) == {"prompts": ["a"], "num_images": 3, "train_steps": 7, "seed": 0}


def follow_a_video(api_url, stream_up: bool) -> tuple[list, list, dict, str]:
    """A small generation waited for by `Client.wait`: (request paths, updates, final record, job id); the
    stream refused (a transport error) unless `stream_up`."""
    import httpx

    from client.http import Client

    client, paths, updates = Client(url=api_url, api_key=KEY_A), [], []

    def record(request):
        paths.append(request.url.path)
        if not stream_up and request.url.path.endswith("/events"):
            raise httpx.ConnectError("refused", request=request)

    client._http.event_hooks["request"].append(record)
    job_id = client.generate({"prompt": "followed", "num_frames": 4, "height": 32, "width": 32, "steps": 4,
                              "format": "gif"})["job_id"]
    final = client.wait(job_id, on_update=lambda job: updates.append((job["status"], job.get("stage"))),
                        poll_s=0.05, timeout_s=120)
    return paths, updates, final, job_id


def test_the_client_follows_the_live_status_stream_and_polls_when_it_fails(api_url):
    """`Client.wait` (the CLI's progress bars) reads GET /jobs/{id}/events: one GET of the job before and one
    after; with the stream refused it polls instead, to the same end."""
    paths, updates, final, job_id = follow_a_video(api_url, stream_up=True)
    assert final["status"] == "succeeded" and final["result"]["video_url"], final
    assert paths == ["/generate", f"/jobs/{job_id}", f"/jobs/{job_id}/events", f"/jobs/{job_id}"], paths
    assert ("running", "denoise") in updates and updates[-1] == ("succeeded", "done"), updates

    paths, updates, final, job_id = follow_a_video(api_url, stream_up=False)
    assert final["status"] == "succeeded", final
    assert paths.count(f"/jobs/{job_id}/events") == 1 and paths.count(f"/jobs/{job_id}") > 2, paths
    assert updates[-1] == ("succeeded", "done"), updates


def test_generate_sends_a_control_and_an_init_only_when_given_a_source():
    from client.main import build_parser, generate_request

    def request(*flags):
        return generate_request(build_parser().parse_args(["generate", "--prompt", "p", "-o", "v.gif", *flags]))

    assert "control" not in request() and "init" not in request()
    assert request("--control-file", "file_1")["control"] == {"file": "file_1", "type": "canny"}
    full = request("--control-job", "job_1", "--control-type", "precomputed", "--control-scale", "0.5",
                   "--init-file", "file_2", "--init-strength", "0.4")
    assert full["control"] == {"job_id": "job_1", "type": "precomputed", "scale": 0.5}
    assert full["init"] == {"file": "file_2", "strength": 0.4}
    assert request("--init-job", "job_2")["init"] == {"job_id": "job_2"}  # the server's default strength


def test_files_upload_list_show_delete_and_generate_with_a_control_and_an_init(api_url, tmp_path):
    from engine.export import read_video
    from tests.service.test_files import encode, moving_square

    reference = tmp_path / "ref.gif"
    reference.write_bytes(encode(moving_square(), ".gif"))
    made = stillmoving(api_url, "files", "upload", reference, "--idempotency-key", "cli-file-1")
    assert made.returncode == 0, made.stderr
    uploaded = json.loads(made.stdout)
    assert (uploaded["kind"], uploaded["frames"], uploaded["filename"]) == ("video", 5, "ref.gif")
    again = stillmoving(api_url, "files", "upload", reference, "--idempotency-key", "cli-file-1")
    assert json.loads(again.stdout) == uploaded  # the retry got the first upload's file
    assert json.loads(stillmoving(api_url, "files", "show", uploaded["file_id"]).stdout) == uploaded

    out = tmp_path / "controlled.gif"
    gen = stillmoving(api_url, "generate", "--prompt", "a toy", "--num-frames", "4", "--steps", "4", "--seed", "3",
                      "--control-file", uploaded["file_id"], "--control-scale", "0.5",
                      "--init-file", reference, "--init-strength", "0.5", "-o", out)
    assert gen.returncode == 0, gen.stderr
    assert read_video(out).shape == (4, 32, 32, 3)
    listed = json.loads(stillmoving(api_url, "files", "list", "--limit", "1").stdout)
    init_file = listed["items"][0]  # the local init file, uploaded first
    assert init_file["file_id"] != uploaded["file_id"] and init_file["sha256"] == uploaded["sha256"]
    assert f"as file {init_file['file_id']}" in gen.stderr and listed["next_cursor"]
    second = json.loads(stillmoving(api_url, "files", "list", "--limit", "1", "--cursor", listed["next_cursor"]).stdout)
    assert second["items"][0] == uploaded
    job = json.loads(stillmoving(api_url, "jobs", "--limit", "1").stdout)["items"][0]
    assert job["params"]["control"]["file"] == uploaded["file_id"] and job["params"]["control"]["scale"] == 0.5
    assert job["params"]["init"]["file"] == init_file["file_id"] and job["params"]["init"]["strength"] == 0.5
    assert job["result"]["control_url"]

    v2v = stillmoving(api_url, "generate", "--prompt", "a toy", "--num-frames", "4", "--steps", "4",
                      "--init-job", job["id"], "-o", tmp_path / "again.gif")
    assert v2v.returncode == 0, v2v.stderr
    assert json.loads(stillmoving(api_url, "jobs", "--limit", "1").stdout)["items"][0]["params"]["init"]["job_id"] == \
        job["id"]

    for file_id in (uploaded["file_id"], init_file["file_id"]):
        deleted = stillmoving(api_url, "files", "delete", file_id)
        assert deleted.returncode == 0 and f"deleted file {file_id}" in deleted.stderr, deleted.stderr
    gone = stillmoving(api_url, "files", "show", uploaded["file_id"])
    assert gone.returncode == 1 and "404" in gone.stderr
    bad = stillmoving(api_url, "generate", "--prompt", "x", "--control-type", "canny", "-o", tmp_path / "v.gif")
    assert bad.returncode == 2 and "--control-file or --control-job" in bad.stderr
    missing = stillmoving(api_url, "generate", "--prompt", "x", "--control-file", uploaded["file_id"], "-o",
                          tmp_path / "v.gif")
    assert missing.returncode == 1 and "control.file" in missing.stderr
