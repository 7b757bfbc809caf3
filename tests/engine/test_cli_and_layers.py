"""The command line end to end, and the layering rule (the engine imports no web stack)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.export import read_video

ROOT = Path(__file__).resolve().parents[2]


def run_engine(*args, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "engine", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_cli_customize_then_generate_writes_an_mp4_of_the_asked_size(tmp_path):
    made = run_engine("make-tiny-checkpoint", "--format", "ldm", "ck.safetensors", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    cust = run_engine("customize", "ck.safetensors", "--prompt", "a sks toy", "--out", "cust", "--num-images", "2",
                      "--train-steps", "3", "--motion-steps", "2", "--motion-images", "2", "--preset", "tiny", "--quiet",
                      cwd=tmp_path)
    assert cust.returncode == 0, cust.stderr
    assert json.loads(cust.stdout.strip().splitlines()[-1])["out"] == "cust"
    gen = run_engine("generate", "--customization", "cust", "--checkpoint", "ck.safetensors", "--prompt", "a sks toy",
                     "-o", "out/v.mp4", "--frames", "6", "--height", "48", "--width", "40", "--steps", "2",
                     "--preset", "tiny", "--quiet", cwd=tmp_path)
    assert gen.returncode == 0, gen.stderr
    frames = read_video(tmp_path / "out" / "v.mp4")
    assert frames.shape == (6, 48, 40, 3)
    assert (tmp_path / "out" / "v.png").exists()


def test_cli_reports_bad_input_with_exit_code_2(tmp_path):
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 64)
    result = run_engine("customize", "bad.safetensors", "--prompt", "x", "--out", "c", "--preset", "tiny", "--quiet",
                        cwd=tmp_path)
    assert result.returncode == 2
    assert "invalid_checkpoint" in result.stderr
    result = run_engine("generate", "--prompt", "x", "-o", "v.mp4", "--height", "30", "--quiet", cwd=tmp_path)
    assert result.returncode == 2 and "multiples of 8" in result.stderr


def test_importing_engine_loads_no_web_or_queue_stack():
    code = "import sys, engine; bad = [m for m in ('fastapi', 'celery', 'starlette', 'kombu', 'uvicorn') if m in sys.modules]; print(bad)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("fmt", ["gif", "mp4"])
def test_generate_writes_requested_format(tmp_path, fmt):
    """On the default preset (the committed shapes world)."""
    result = run_engine("generate", "--prompt", "x", "-o", f"v.{fmt}", "--frames", "4", "--steps", "1", "--quiet",
                        cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert read_video(tmp_path / f"v.{fmt}").shape == (4, 32, 32, 3)
