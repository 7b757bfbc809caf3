"""`make demo`: start the local stack on the `shapes` preset, then as an HTTP client upload the world's
committed customized checkpoint (a DreamBooth fine-tune as a single-file checkpoint: `sks` = the two-tone look), train a Still-Moving
customization, generate a video of the customized object moving, write ``out/demo.mp4``, print what the
world's judge reads from it (look, shape, colour, direction), and stop what was started."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from scripts import stack

ROOT = stack.ROOT
DEMO_ENV = {  # the shapes preset, with a smaller shared Motion Adapter so the demo takes a few minutes on CPU
    "STILLMOVING_MODEL_PRESET": "shapes", "STILLMOVING_MOTION_TRAIN_STEPS": "100",
    "STILLMOVING_MOTION_NUM_IMAGES": "16", "STILLMOVING_WAIT_POLL_S": "1",
}
DEMO_CONFIG = {"name": "two-tone shapes", "prompts": ["a sks red circle", "a sks blue square", "a sks yellow triangle",
                                                      "a sks green circle"],
               "num_images": 8, "train_steps": 100, "seed": 0}
DEMO_PROMPT = "a sks red square moving right"


def wait(client: httpx.Client, job_id: str, label: str) -> dict:
    last = None
    while True:
        job = client.get(f"/jobs/{job_id}").raise_for_status().json()
        line = (job["status"], job["stage"], round(job["progress"] * 100))
        if line != last:
            where = f" (queue position {job['queue_position']})" if job.get("queue_position") else ""
            print(f"  [{label}] {job['status']:<9} {job['stage'] or '-':<22} {line[2]:3d}%{where}", flush=True)
            last = line
        if job["status"] in ("succeeded", "failed", "canceled"):
            if job["status"] != "succeeded":
                raise SystemExit(f"{label} job {job['status']}: {job['error']}")
            return job
        time.sleep(0.3)


def run_client(url: str, key: str) -> Path:
    out = ROOT / "out"
    out.mkdir(exist_ok=True)
    checkpoint = out / "shapes-dreambooth.safetensors"
    subprocess.run([sys.executable, "-m", "engine", "make-checkpoint", "--format", "ldm", str(checkpoint)],
                   cwd=ROOT, check=True, stderr=subprocess.DEVNULL)
    print(f"the shapes world's customized T2I (DreamBooth, single-file LDM checkpoint, 'sks' = two-tone): {checkpoint}")
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as client:
        with open(checkpoint, "rb") as handle:
            response = client.post("/customizations", files={"checkpoint": (checkpoint.name, handle)},
                                   data={"config": json.dumps(DEMO_CONFIG)})
        response.raise_for_status()
        accepted = response.json()
        print(f"POST /customizations -> {response.status_code} {accepted}")
        wait(client, accepted["job_id"], "customize")
        request = {"customization_id": accepted["customization_id"], "prompt": DEMO_PROMPT, "seed": 42, "fps": 4}
        response = client.post("/generate", json=request).raise_for_status()
        print(f"POST /generate -> {response.status_code} {response.json()}")
        job = wait(client, response.json()["job_id"], "generate")
        video = httpx.get(job["result"]["video_url"], timeout=60).raise_for_status().content
    target = out / "demo.mp4"
    target.write_bytes(video)
    print(f"wrote {target} ({len(video)} bytes, seed {job['result']['seed']}, timings {job['result']['timings']})")
    describe(target)
    return target


def describe(video: Path) -> dict:
    """Print what the shapes world's judge reads from the video: look, shape, colour, direction of motion."""
    from engine.shapes.judge import read_video_file

    read = read_video_file(video)
    m, track = read["majority"], read["track"]
    print(f"the judge reads {DEMO_PROMPT!r}: {round(read['readable'] * read['frames'])}/{read['frames']} frames "
          f"readable (one object of the world's size, every head confident); majority a {m['colour']} {m['shape']}, "
          f"two-tone in {round(read['look_two_tone'] * read['frames'])}/{read['frames']} frames, centroid moved "
          f"{track['displacement']} px ({track['direction']})")
    return read


def main() -> None:
    for name, value in DEMO_ENV.items():
        os.environ.setdefault(name, value)
    state = stack.up(api_port=stack.free_port() if "STILLMOVING_API_PORT" not in os.environ else None)
    print(f"stack up at {state['api_url']} (processes: {', '.join(state['pids'])})")
    try:
        run_client(state["api_url"], state["api_key"])
    finally:
        stack.down()


if __name__ == "__main__":
    main()
