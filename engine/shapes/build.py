"""`python -m engine.shapes.build`: train the shapes world from nothing, seeded, and save it in the layouts
of the real repositories (an SD 1.5 diffusers pipeline directory and an AnimateDiff motion-adapter directory).

    models/shapes/base/            model_index.json, vae/, text_encoder/, tokenizer/, unet/, scheduler/
    models/shapes/motion-adapter/  config.json, diffusion_pytorch_model.safetensors
    models/shapes/judge/           the judge classifier (safetensors + config.json)
    models/shapes/customized/      DreamBooth-style customized T2Is (full UNet and LoRA)
    models/shapes/controlnet-canny/ the canny ControlNet of the T2I (config.json, diffusion_pytorch_model.safetensors)
    models/shapes/build.json       per stage: settings, seconds, metrics

Each stage reads what the earlier ones saved, so one can be re-run alone (`--stages unet`).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

STAGES = ("judge", "vae", "text", "unet", "motion", "customized", "controlnet")
ABLATIONS = ("text_ablation",)  # measurements that save no model: run by name
DEFAULT_OUT = Path(__file__).resolve().parents[2] / "models" / "shapes"


def record(out: Path, stage: str, metrics: dict) -> None:
    path = out / "build.json"
    report = json.loads(path.read_text()) if path.exists() else {}
    report[stage] = metrics
    path.write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")


def run_stage(stage: str, out: Path, quick: bool, train_text_encoder: bool = False) -> dict:
    """Train one stage and save it under `out`; `quick` runs a few steps (tests: the command keeps working)."""
    from engine.shapes import save

    if stage == "vae":
        from engine.shapes.train_vae import train_vae

        vae, metrics = train_vae(steps=4 if quick else 2000)
        save.save_vae(vae, out)
    elif stage == "text":
        metrics = save.save_text_side(out)
    elif stage == "unet":
        from engine.shapes.train_unet import train_unet

        parts = save.load_base(out)
        unet, metrics = train_unet(parts, steps=4 if quick else None, judge=save.load_judge(out),
                                   train_text_encoder=train_text_encoder)
        save.save_unet(unet, out)
        if train_text_encoder:
            save.save_text_encoder(parts["text_encoder"], out)
    elif stage == "text_ablation":
        from engine.shapes.train_unet import train_unet

        metrics = {}
        for trained in (False, True):
            _, run = train_unet(save.load_base(out), steps=4 if quick else 1200, judge=save.load_judge(out),
                                eval_every=400, train_text_encoder=trained)
            metrics["trained" if trained else "frozen_random"] = run
    elif stage == "motion":
        from engine.shapes.train_motion import train_motion

        adapter, metrics = train_motion(save.load_base(out), steps=4 if quick else None, judge=save.load_judge(out))
        save.save_motion_adapter(adapter, out)
    elif stage == "judge":
        from engine.shapes.judge import train_judge

        judge, metrics = train_judge(steps=4, num_frames=256) if quick else train_judge()
        save.save_judge(judge, out)
    elif stage == "customized":
        from engine.shapes.dreambooth import make_customized

        metrics = make_customized(save.load_base(out), out / "customized", quick=quick)
    elif stage == "controlnet":
        from engine.shapes.train_controlnet import run

        metrics = run(out, quick=quick)
    else:
        raise ValueError(f"stage={stage!r}; expected one of {STAGES}")
    return metrics


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES + ABLATIONS)
    parser.add_argument("--train-text-encoder", action="store_true",
                        help="train the text encoder with the UNet (default: frozen random, as measured by "
                             "the text_ablation stage)")
    parser.add_argument("--quick", action="store_true", help="a few steps per stage (a smoke test, not a world)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    for stage in args.stages:
        start = time.time()
        metrics = run_stage(stage, args.out, args.quick, args.train_text_encoder)
        metrics["wall_seconds"] = round(time.time() - start, 1)
        record(args.out, stage, metrics)
        print(f"[build] {stage}: {time.time() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
