"""`python -m engine.shapes.bars`: measure the shapes world against its bars, through the product's own
loaders (the `shapes` preset's `from_pretrained`, the upload loaders for the customized checkpoints).

    base T2I     shape and colour named by the prompt recognized in >= 90% of samples
    base T2V     one object in >= 90% of frames; centroid moves as named in >= 80% of moving videos;
                 'still' videos stay within `judge.STILL_MAX_PX`
    customized   the new look in >= 90% of `sks` samples and <= 10% of the others

Writes a JSON report and a contact sheet (the README's picture of the world).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from diffusers import AnimateDiffPipeline, StableDiffusionPipeline
from PIL import Image

from common.presets import PRESETS
from engine.shapes import judge as judge_mod
from engine.shapes import world
from engine.shapes.paths import CUSTOMIZED_DIR, JUDGE_DIR

BARS = {"t2i_shape": 0.9, "t2i_colour": 0.9, "t2v_one_object": 0.9, "t2v_direction": 0.8, "t2v_still": 0.8,
        "custom_look_sks": 0.9, "custom_look_other_max": 0.1}
GUIDANCE = PRESETS["shapes"].guidance_scale  # the preset's default (`--guidance` measures another)
STEPS = 25
DOCS = Path(__file__).resolve().parents[2] / "docs"


SHEET_CHECKPOINT = "dreambooth-unet.safetensors"  # the demo's (as its single-file form): the sheet's last row


def _generators(seed: int, n: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed + i) for i in range(n)]


def _uint8(x) -> np.ndarray:
    return (np.asarray(x) * 255).round().astype(np.uint8)


def sample_images(base, components: dict, prompts: list[str], seed: int, batch: int = 64) -> np.ndarray:
    """T2I samples (N, H, W, 3) uint8, sample i seeded `seed + i`, with the product's DDIM scheduler."""
    from engine.models import make_scheduler

    pipe = StableDiffusionPipeline(**components)
    pipe.scheduler = make_scheduler(base, "ddim")
    pipe.set_progress_bar_config(disable=True)
    out = []
    for i in range(0, len(prompts), batch):
        chunk = prompts[i:i + batch]
        with torch.inference_mode():
            out.append(pipe(chunk, num_inference_steps=STEPS, guidance_scale=GUIDANCE, height=world.SIZE,
                            width=world.SIZE, output_type="np", generator=_generators(seed + i, len(chunk))).images)
    return _uint8(np.concatenate(out))


def sample_videos(base, unet, prompts: list[str], seed: int, batch: int = 16) -> np.ndarray:
    """T2V samples (N, F, H, W, 3) uint8 from a `UNetMotionModel`, sample i seeded `seed + i`."""
    from engine.models import make_scheduler

    c = base.components
    pipe = AnimateDiffPipeline(vae=c["vae"], text_encoder=c["text_encoder"], tokenizer=c["tokenizer"], unet=unet,
                               motion_adapter=None, scheduler=make_scheduler(base, "ddim"))
    pipe.set_progress_bar_config(disable=True)
    out = []
    for i in range(0, len(prompts), batch):
        chunk = prompts[i:i + batch]
        with torch.inference_mode():
            out.append(pipe(chunk, num_frames=world.NUM_FRAMES, num_inference_steps=STEPS, guidance_scale=GUIDANCE,
                            height=world.SIZE, width=world.SIZE, output_type="np",
                            generator=_generators(seed + i, len(chunk))).frames)
    return _uint8(np.concatenate(out))


def combos(n: int) -> list[tuple[str, str]]:
    all_ = [(s, c) for s in world.SHAPES for c in world.COLOURS]
    return [all_[i % len(all_)] for i in range(n)]


def t2i_report(base, judge, n: int, seed: int) -> tuple[dict, np.ndarray]:
    asked = combos(n)
    images = sample_images(base, base.components, [world.image_caption(s, c) for s, c in asked], seed)
    read = judge.read(images)
    return {"samples": n,
            "shape": float(np.mean([r == s for r, (s, _) in zip(read["shape"], asked)])),
            "colour": float(np.mean([r == c for r, (_, c) in zip(read["colour"], asked)])),
            "one_object": float(np.mean([k == 1 for k in read["objects"]]))}, images


def t2v_report(base, judge, n: int, seed: int) -> tuple[dict, np.ndarray, list[str]]:
    directions = [list(world.DIRECTIONS)[i % len(world.DIRECTIONS)] for i in range(n)]
    asked = combos(n)
    prompts = [f"{world.image_caption(s, c)} {world.motion_phrase(d)}" for (s, c), d in zip(asked, directions)]
    videos = sample_videos(base, base.sampling_motion_unet(), prompts, seed)
    agree, one = {d: [] for d in world.DIRECTIONS}, []
    for video, d in zip(videos, directions):
        read = judge.read(video)
        agree[d].append(judge_mod.moves_as_named(read["centroid"], d))
        one.extend(k == 1 for k in read["objects"])
    moving = [ok for d, oks in agree.items() if d != "still" for ok in oks]
    return {"videos": n, "frames": len(one), "one_object": float(np.mean(one)), "direction": float(np.mean(moving)),
            "still": float(np.mean(agree["still"])),
            "by_direction": {d: float(np.mean(v)) for d, v in agree.items()}}, videos, prompts


def custom_report(base, judge, checkpoint: Path, n: int, seed: int) -> tuple[dict, np.ndarray]:
    from engine.checkpoints import load_customized_t2i

    fmt, components = load_customized_t2i(base.components, checkpoint, base.unet_config_dir)
    asked = combos(n)
    sks = sample_images(base, components, [world.image_caption(s, c, "two-tone") for s, c in asked], seed)
    other = sample_images(base, components, [world.image_caption(s, c) for s, c in asked], seed)
    read_sks, read_other = judge.read(sks), judge.read(other)
    return {"format": fmt, "samples_each": n, "readable_sks": float(np.mean(read_sks["readable"])),
            "readable_other": float(np.mean(read_other["readable"])),
            "look_sks": float(np.mean([v == "two-tone" for v in read_sks["look"]])),
            "look_other": float(np.mean([v == "two-tone" for v in read_other["look"]])),
            "sks_colour": float(np.mean([r == c for r, (_, c) in zip(read_sks["colour"], asked)])),
            "sks_shape": float(np.mean([r == s for r, (s, _) in zip(read_sks["shape"], asked)]))}, sks


def contact_sheet(images: np.ndarray, videos: np.ndarray, custom: np.ndarray, path: Path, scale: int = 3) -> None:
    """Row 1: T2I samples; rows 2-6: one T2V video per direction (frames left to right); row 7: `sks` samples."""
    rows = [np.concatenate(list(images[:12]), 1)]
    for d in range(len(world.DIRECTIONS)):
        frames = list(videos[d]) + [np.zeros_like(videos[d][0])] * (12 - world.NUM_FRAMES)
        rows.append(np.concatenate(frames, 1))
    rows.append(np.concatenate(list(custom[:12]), 1))
    sheet = np.concatenate(rows, 0)
    Image.fromarray(sheet).resize((sheet.shape[1] * scale, sheet.shape[0] * scale), Image.NEAREST).save(path)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=72, help="per measure (the bars need at least 64)")
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=DOCS / "shapes-world.json")
    parser.add_argument("--sheet", type=Path, default=DOCS / "shapes-world.png")
    parser.add_argument("--guidance", type=float, default=GUIDANCE)
    args = parser.parse_args(argv)
    globals()["GUIDANCE"] = args.guidance
    torch.set_num_threads(2)
    import engine

    start = time.time()
    base = engine.load_base_models(engine.ModelSpec(preset="shapes"), Path(tempfile.mkdtemp()))
    judge = judge_mod.Judge.load(JUDGE_DIR)
    t2i, images = t2i_report(base, judge, args.samples, args.seed)
    t2v, videos, _ = t2v_report(base, judge, args.samples + args.samples // 9, args.seed)
    customs, sheet_custom = {}, None
    for path in sorted(CUSTOMIZED_DIR.glob("*.safetensors")):
        customs[path.name], sks = custom_report(base, judge, path, args.samples, args.seed)
        sheet_custom = sks if path.name == SHEET_CHECKPOINT else sheet_custom
    passed = {
        "t2i_shape": t2i["shape"] >= BARS["t2i_shape"], "t2i_colour": t2i["colour"] >= BARS["t2i_colour"],
        "t2v_one_object": t2v["one_object"] >= BARS["t2v_one_object"],
        "t2v_direction": t2v["direction"] >= BARS["t2v_direction"], "t2v_still": t2v["still"] >= BARS["t2v_still"],
    }
    for name, rep in customs.items():
        passed[f"custom_look_sks[{name}]"] = rep["look_sks"] >= BARS["custom_look_sks"]
        passed[f"custom_look_other[{name}]"] = rep["look_other"] <= BARS["custom_look_other_max"]
    from engine.shapes.train_unet import caption_distances

    distances = caption_distances(base.components["text_encoder"], base.components["tokenizer"])
    report = {"bars": BARS, "passed": passed, "t2i": t2i, "t2v": t2v, "customized": customs,
              "caption_distances": distances,
              "settings": {"steps": STEPS, "guidance_scale": GUIDANCE, "scheduler": "ddim", "seed": args.seed},
              "revision": engine.ModelSpec(preset="shapes").identity()["revision"],
              "seconds": round(time.time() - start, 1)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    if sheet_custom is not None:
        contact_sheet(images, videos, sheet_custom, args.sheet)
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
