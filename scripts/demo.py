"""`make demo`: start the local stack, then as an HTTP client make a customization from a tiny checkpoint
and a video, print each job's progress, write ``out/demo.mp4``, and stop what was started."""

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
DEMO_ENV = {  # the tiny preset, with a small shared Motion Adapter so the demo takes about a minute on CPU
    "STILLMOVING_MODEL_PRESET": "tiny", "STILLMOVING_MOTION_TRAIN_STEPS": "50",
    "STILLMOVING_MOTION_NUM_IMAGES": "4", "STILLMOVING_WAIT_POLL_S": "1",
}


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
    checkpoint = out / "tiny-lora.safetensors"
    subprocess.run([sys.executable, "-m", "engine", "make-tiny-checkpoint", "--format", "lora", str(checkpoint)],
                   cwd=ROOT, check=True, stderr=subprocess.DEVNULL)
    print(f"made a tiny customized checkpoint: {checkpoint}")
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as client:
        config = {"name": "demo", "prompts": ["a photo of sks dog", "sks dog on a beach"], "num_images": 4,
                  "train_steps": 40, "rank": 4, "num_frames": 8, "height": 32, "width": 32, "seed": 0}
        with open(checkpoint, "rb") as handle:
            response = client.post("/customizations", files={"checkpoint": (checkpoint.name, handle)},
                                   data={"config": json.dumps(config)})
        response.raise_for_status()
        accepted = response.json()
        print(f"POST /customizations -> {response.status_code} {accepted}")
        wait(client, accepted["job_id"], "customize")
        request = {"customization_id": accepted["customization_id"], "prompt": "sks dog running on a beach",
                   "num_frames": 16, "height": 64, "width": 64, "steps": 8, "seed": 42, "fps": 8}
        response = client.post("/generate", json=request).raise_for_status()
        print(f"POST /generate -> {response.status_code} {response.json()}")
        job = wait(client, response.json()["job_id"], "generate")
        video = httpx.get(job["result"]["video_url"], timeout=60).raise_for_status().content
    target = out / "demo.mp4"
    target.write_bytes(video)
    print(f"wrote {target} ({len(video)} bytes, seed {job['result']['seed']}, timings {job['result']['timings']})")
    return target


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
