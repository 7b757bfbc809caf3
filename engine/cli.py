"""Command line for local use: `python -m engine customize|generate|make-tiny-checkpoint`."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from engine.errors import EngineError
from engine.specs import ModelSpec, MotionAdapterSpec, SampleSpec, TrainSpec


def _model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", choices=["shapes", "tiny", "sd15"], default=ModelSpec.preset)
    parser.add_argument("--base-model", default=None, help="hub id or local dir (default: the preset's)")
    parser.add_argument("--motion-adapter", default=None, help="hub id or local dir (default: the preset's)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto", choices=["auto", "float32", "float16", "bfloat16"])
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--offline", action="store_true", help="local files only")
    parser.add_argument("--workdir", default=None, help="scratch directory (default: a temp dir)")


def _model_spec(args) -> ModelSpec:
    return ModelSpec(preset=args.preset, base_model=args.base_model, motion_adapter=args.motion_adapter,
                     device=args.device, precision=args.precision, cache_dir=args.cache_dir,
                     local_files_only=args.offline)


def _printer(quiet: bool):
    last: dict[str, float] = {}

    def report(stage: str, step: int, total: int) -> None:
        now = time.monotonic()
        if quiet or (step != total and now - last.get(stage, 0.0) < 0.5):
            return
        last[stage] = now
        print(f"[{stage}] {step}/{total}", file=sys.stderr, flush=True)

    return report


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m engine", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    c = sub.add_parser("customize", help="train Spatial Adapters from a customized T2I checkpoint")
    c.add_argument("checkpoint", type=Path)
    c.add_argument("--prompt", action="append", required=True, dest="prompts")
    c.add_argument("--out", type=Path, required=True, help="artifact directory")
    c.add_argument("--motion-cache", type=Path, default=Path(".cache/motion-adapters"))
    c.add_argument("--num-images", type=int, default=TrainSpec.num_images)
    c.add_argument("--train-steps", type=int, default=TrainSpec.train_steps)
    c.add_argument("--rank", type=int, default=TrainSpec.rank)
    c.add_argument("--learning-rate", type=float, default=TrainSpec.learning_rate)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--frames", type=int, default=None, help="default: the preset's")
    c.add_argument("--height", type=int, default=None, help="default: the preset's")
    c.add_argument("--width", type=int, default=None, help="default: the preset's")
    c.add_argument("--train-resnets", action="store_true")
    c.add_argument("--train-projections", action="store_true")
    c.add_argument("--train-feedforward", action="store_true")
    c.add_argument("--no-motion-adapter", action="store_true", help="ablation: train without the Motion Adapter")
    c.add_argument("--motion-steps", type=int, default=MotionAdapterSpec.train_steps)
    c.add_argument("--motion-images", type=int, default=MotionAdapterSpec.num_images)
    _model_args(c)

    g = sub.add_parser("generate", help="sample a video (base, naive injection or Still-Moving)")
    g.add_argument("--prompt", required=True)
    g.add_argument("-o", "--output", type=Path, required=True, help="out.mp4 or out.gif")
    g.add_argument("--customization", type=Path, default=None, help="artifact directory from `customize`")
    g.add_argument("--checkpoint", type=Path, default=None, help="the customization's T2I checkpoint")
    g.add_argument("--method", default="still-moving", choices=["still-moving", "naive", "base"])
    g.add_argument("--negative-prompt", default="")
    g.add_argument("--frames", type=int, default=None, help="default: the preset's")
    g.add_argument("--height", type=int, default=None, help="default: the preset's")
    g.add_argument("--width", type=int, default=None, help="default: the preset's")
    g.add_argument("--steps", type=int, default=None, help="default: the preset's")
    g.add_argument("--guidance-scale", type=float, default=None, help="default: the preset's")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--fps", type=int, default=8)
    g.add_argument("--scale", type=float, default=1.0, help="spatial adapter scale")
    g.add_argument("--motion-scale", type=float, default=0.0,
                   help="Motion Adapter scale (0 = removed, 1 = static, < 0 = more motion); needs --motion-cache")
    g.add_argument("--motion-cache", type=Path, default=Path(".cache/motion-adapters"),
                   help="where `customize` cached the Motion Adapter")
    g.add_argument("--scheduler", default="ddim", choices=["ddim", "euler", "dpm++"])
    _model_args(g)

    e = sub.add_parser("evaluate", help="base / naive / Still-Moving / no-Motion-Adapter side by side")
    e.add_argument("customization", type=Path, help="artifact directory from `customize`")
    e.add_argument("--checkpoint", type=Path, required=True, help="the customization's T2I checkpoint")
    e.add_argument("--prompt", required=True)
    e.add_argument("--out", type=Path, required=True, help="directory for contact_sheet.png and metrics.json")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--frames", type=int, default=None, help="default: the preset's")
    e.add_argument("--steps", type=int, default=None, help="default: the preset's")
    e.add_argument("--clip-model", default=None, help="CLIP weights (hub id or dir) for CLIP-I/CLIP-T")
    _model_args(e)

    t = sub.add_parser("make-tiny-checkpoint", help="write a tiny customized checkpoint (demo/tests)")
    t.add_argument("--format", default="lora", choices=["lora", "lora-kohya", "unet", "ldm"])
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("output", type=Path)
    m = sub.add_parser("make-checkpoint", help="write the shapes world's customized checkpoint (two-tone `sks`)")
    m.add_argument("--format", default="lora", choices=["lora", "lora-kohya", "unet", "ldm"])
    m.add_argument("--no-prior-preservation", action="store_true", help="the LoRA fine-tuned without class images")
    m.add_argument("output", type=Path)
    for p in (c, g, e):
        p.add_argument("--quiet", action="store_true")
    return parser


def quiet_libraries() -> None:
    """Keep library chatter (dtype-cast notes, optional-backend hints) out of the CLI's output."""
    import warnings

    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.set_verbosity_error()
    transformers_logging.set_verbosity_error()
    warnings.filterwarnings("ignore", message="Already found a `peft_config`")


def _workdir(args) -> Path:
    return Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="stillmoving-"))


def run(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (2 with the engine's message on a bad input)."""
    args = build_parser().parse_args(argv)
    quiet_libraries()
    import engine

    try:
        if args.command == "make-tiny-checkpoint":
            print(engine.make_tiny_checkpoint(args.format, args.output, seed=args.seed))
            return 0
        if args.command == "make-checkpoint":
            from engine.shapes.checkpoints import make_shapes_checkpoint

            print(make_shapes_checkpoint(args.format, args.output, not args.no_prior_preservation))
            return 0
        base = engine.load_base_models(_model_spec(args), _workdir(args))
        if args.command == "customize":
            train = TrainSpec(prompts=tuple(args.prompts), num_images=args.num_images, train_steps=args.train_steps,
                              rank=args.rank, learning_rate=args.learning_rate, seed=args.seed,
                              num_frames=args.frames, height=args.height, width=args.width,
                              train_resnets=args.train_resnets, train_projections=args.train_projections,
                              train_feedforward=args.train_feedforward, use_motion_adapter=not args.no_motion_adapter,
                              motion=MotionAdapterSpec(train_steps=args.motion_steps, num_images=args.motion_images))
            manifest = engine.customize(base, args.checkpoint, train, args.out, args.motion_cache,
                                        progress=_printer(args.quiet))
            print(json.dumps({"out": str(args.out), "timings": manifest["timings"],
                              "final_loss": manifest["loss_curve"][-1]}))
            return 0
        if args.command == "evaluate":
            from engine.evaluation import evaluate

            report = evaluate(base, args.customization, args.checkpoint, args.prompt, args.out, seed=args.seed,
                              num_frames=args.frames, steps=args.steps, progress=_printer(args.quiet),
                              clip_model=args.clip_model, local_files_only=args.offline)
            print(json.dumps(report))
            return 0
        custom = None
        if args.customization is not None:
            if args.checkpoint is None:
                raise engine.SpecError("--checkpoint is required with --customization", field="checkpoint")
            key = (engine.read_manifest(args.customization).get("motion_adapter") or {}).get("key")
            motion_file = args.motion_cache / key / engine.MOTION_ADAPTER_FILE if key else None
            custom = engine.load_customization(base, args.customization, args.checkpoint,
                                               motion_file if motion_file and motion_file.exists() else None)
        fmt = args.output.suffix.lstrip(".") or "mp4"
        sample = SampleSpec(prompt=args.prompt, negative_prompt=args.negative_prompt, num_frames=args.frames,
                            height=args.height, width=args.width, steps=args.steps,
                            guidance_scale=args.guidance_scale, seed=args.seed, fps=args.fps, format=fmt,
                            spatial_adapter_scale=args.scale, motion_adapter_scale=args.motion_scale,
                            method=args.method, scheduler=args.scheduler)
        result = engine.generate(base, custom, sample, args.output.parent or Path("."),
                                 progress=_printer(args.quiet), stem=args.output.stem)
        print(json.dumps({k: str(v) if isinstance(v, Path) else v for k, v in result.items()}))
        return 0
    except EngineError as exc:
        print(f"error ({exc.code}): {exc}", file=sys.stderr)
        return 2
