"""`python -m engine.shapes.evidence` (`make evidence`): does Still-Moving work? The controlled experiment of
issue #12 on the shapes world, written to `docs/evidence.md` and `docs/evidence.json`.

Customizations: the committed DreamBooth LoRA and full fine-tune, and a stronger full fine-tune made here (the
same recipe at 5x the learning rate), each with the measured drift of its injected layers' features against the
base (`drift.feature_drift`). Rows (`ROWS`): the base T2V, naive injection, Still-Moving at the product's
defaults, and one change each: no Motion Adapter, Motion Adapter scale -1 / 1 at sampling, a Motion Adapter
trained on the customized model, prior preservation, wider Spatial Adapters. Every row samples every prompt
(`PROMPTS`, fixed before any run: seen and held-out shapes, all four directions and still) at every seed and
is scored by `measures.video_measures` (means and 95% bootstrap intervals). Rows that only change how a video
is sampled share their customization's training (`TRAININGS`). The report is rewritten after every row, so a
run cut short leaves what it measured.
"""

from __future__ import annotations

import argparse
import copy
import json
import shlex
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

import engine
from engine.checkpoints import load_customized_t2i
from engine.evaluation import contact_sheet
from engine.export import to_uint8
from engine.motion_adapter import ADAPTER_FILE, motion_adapter_key
from engine.progress import Reporter
from engine.sampling import render_frames
from engine.shapes import dreambooth, world
from engine.shapes import judge as judge_mod
from engine.shapes import measures as measures_mod
from engine.shapes.drift import feature_drift
from engine.shapes.paths import CUSTOMIZED_DIR, JUDGE_DIR
from engine.specs import MotionAdapterSpec, SampleSpec, TrainSpec

DOCS = Path(__file__).resolve().parents[2] / "docs"
# The customizations' training prompts name circles and squares only: triangles are the held-out shape. They name
# no motion (Still-Moving trains on stills), so every motion is new to the customization.
TRAIN_SHAPES = ("circle", "square")
TRAIN_PROMPTS = tuple(world.image_caption(s, c, "two-tone") for s in TRAIN_SHAPES for c in world.COLOURS)
PROMPTS = (  # (shape, colour, direction); chosen once, before any run, to cover every direction and colour
    ("circle", "red", "right"), ("square", "blue", "left"), ("circle", "green", "up"), ("square", "yellow", "down"),
    ("square", "red", "still"), ("triangle", "blue", "right"), ("triangle", "yellow", "up"),
    ("triangle", "green", "still"),
)
STRONGER = dict(lora=False, steps=300, lr=2.5e-4, prior_empty_p=0.5)  # the committed full run's, at 5x its lr
CHECKPOINTS = {"lora": dreambooth.LORA_FILE, "full": dreambooth.FULL_FILE, "stronger": None}


def prompt_text(shape: str, colour: str, direction: str) -> str:
    return f"{world.image_caption(shape, colour, 'two-tone')} {world.motion_phrase(direction)}"


# Each training changes one setting of the product's defaults (`TrainSpec`).
TRAININGS: dict[str, dict] = {
    "defaults": {},
    "no-motion-adapter": {"use_motion_adapter": False},
    "shared-motion-adapter": {"motion_adapter_source": "shared"},
    "prior-preservation": {"prior_preservation_weight": 1.0},
    "wider-adapters": {"train_resnets": True, "train_feedforward": True, "train_projections": True},
}


@dataclass(frozen=True)
class Row:
    name: str
    training: str | None  # a `TRAININGS` key; None: the base model
    sample: dict = field(default_factory=dict)  # SampleSpec overrides
    what: str = ""


ROWS = (
    Row("base T2V", None, {"method": "base"}, "the base T2V model, no customization"),
    Row("naive injection", "defaults", {"method": "naive"}, "the customized T2I's spatial layers in the T2V model"),
    Row("Still-Moving", "defaults", {}, "the product's defaults: a Motion Adapter trained on this customization, "
        "attention-only adapters"),
    Row("no Motion Adapter", "no-motion-adapter", {}, "Spatial Adapters trained without the Motion Adapter"),
    Row("Motion Adapter scale 1", "defaults", {"motion_adapter_scale": 1.0}, "Still-Moving, Motion Adapter kept"),
    Row("Motion Adapter scale -1", "defaults", {"motion_adapter_scale": -1.0}, "Still-Moving, Motion Adapter negated"),
    Row("shared Motion Adapter", "shared-motion-adapter", {},
        "the Motion Adapter trained once on the base model's frozen videos, shared by its customizations"),
    Row("shared Motion Adapter scale 1", "shared-motion-adapter", {"motion_adapter_scale": 1.0},
        "does the base's Motion Adapter still freeze motion over the customized layers?"),
    Row("prior preservation", "prior-preservation", {}, "weight 1: base-T2I frozen videos of generic prompts"),
    Row("wider Spatial Adapters", "wider-adapters", {}, "attention + resnets + feed-forward + projections"),
)


@dataclass(frozen=True)
class Settings:
    """What one run measures; `FULL` is the experiment, `SMALL` its test-sized version."""

    customizations: tuple[str, ...] = ("full", "lora", "stronger")  # the demo's checkpoint first
    prompts: tuple[tuple[str, str, str], ...] = PROMPTS
    seeds: tuple[int, ...] = (0, 1, 2, 3)
    steps: int | None = None  # sampling steps; None: the preset's
    num_images: int | None = None  # None: TrainSpec's default
    train_steps: int | None = None
    prior_num_images: int | None = None
    image_steps: int | None = None  # the stills' sampling steps; None: the preset's
    motion: MotionAdapterSpec = MotionAdapterSpec()
    stronger_steps: int = STRONGER["steps"]
    rows: tuple[str, ...] = tuple(r.name for r in ROWS)

    def train_spec(self, training: str) -> TrainSpec:
        given = {k: v for k, v in (("num_images", self.num_images), ("train_steps", self.train_steps),
                                   ("prior_num_images", self.prior_num_images),
                                   ("image_steps", self.image_steps)) if v is not None}
        return TrainSpec(prompts=TRAIN_PROMPTS, seed=0, preview=False, motion=self.motion,
                         **given, **TRAININGS[training])


FULL = Settings()
SMALL = Settings(customizations=("lora",), prompts=(PROMPTS[0], PROMPTS[5]), seeds=(0, 1), steps=3, num_images=2,
                 train_steps=3, prior_num_images=2, image_steps=3, motion=MotionAdapterSpec(train_steps=3, num_images=2))


def make_stronger(base, path: Path, steps: int) -> dict:
    """The stronger full fine-tune: `dreambooth.finetune` with the committed full run's recipe at 5x its rate."""
    # the loaded base is frozen (requires_grad False); a full fine-tune trains every UNet weight of its own copy
    parts = dict(base.components, unet=copy.deepcopy(base.components["unet"]).requires_grad_(True))
    instance = dreambooth.instance_stills()
    prior = dreambooth.class_images(parts, dreambooth.NUM_CLASS)
    tensors, curve = dreambooth.finetune(parts, instance, prior, STRONGER["lora"], steps, STRONGER["lr"],
                                         prior_empty_p=STRONGER["prior_empty_p"])
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"format": "pt"})
    return {**STRONGER, "steps": steps, "final_loss": round(curve[-1], 5) if curve else None}


class Run:
    """One run of the experiment: loads the world once, trains each customization's trainings at most once,
    samples and scores the rows, and rewrites the report after each."""

    def __init__(self, settings: Settings, workdir: Path, out_json: Path | None, command: str):
        self.settings, self.workdir, self.out_json = settings, workdir, out_json
        self.judge = judge_mod.Judge.load(JUDGE_DIR)
        self.base = engine.load_base_models(engine.ModelSpec(preset="shapes"), workdir / "base")
        self.started = time.time()
        self.report: dict = {
            "command": command, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": _machine(), "settings": _jsonable(settings), "complete": False,
            "train_prompts": list(TRAIN_PROMPTS), "held_out_shapes": [s for s in world.SHAPES if s not in TRAIN_SHAPES],
            "prompts": [prompt_text(*p) for p in settings.prompts],
            "sampling": {"steps": self.base.defaults.fill(steps=settings.steps)["steps"],
                         "guidance_scale": self.base.defaults.guidance_scale},
            "rows": {r.name: r.what for r in ROWS if r.name in settings.rows},
            "customizations": {}, "results": {}, "timings": {"videos": 0, "video_seconds": 0.0, "trainings": {}},
        }
        self.examples: dict[str, dict[str, np.ndarray]] = {}

    # --- pieces -------------------------------------------------------------------------------------------
    def checkpoint(self, name: str) -> Path:
        if CHECKPOINTS[name] is not None:
            return CUSTOMIZED_DIR / CHECKPOINTS[name]
        path = self.workdir / "stronger-unet.safetensors"
        start = time.time()
        info = make_stronger(self.base, path, self.settings.stronger_steps)
        self.report["customizations"].setdefault(name, {})["finetune"] = info | {
            "seconds": round(time.time() - start, 1)}
        print(f"[evidence] stronger fine-tune: {info} in {time.time() - start:.1f} s", flush=True)
        return path

    def train(self, cust: str, checkpoint: Path, training: str) -> engine.Customization:
        """Train (once) and load the customization; the defaults' is loaded with its shared Motion Adapter."""
        spec = self.settings.train_spec(training)
        directory = self.workdir / cust / training
        start = time.time()
        manifest = engine.customize(self.base, checkpoint, spec, directory, self.workdir / "motion-cache")
        seconds = round(time.time() - start, 1)
        motion_file = None
        if manifest["motion_adapter"]["source"] == "shared":
            motion_file = self.workdir / "motion-cache" / motion_adapter_key(self.base, spec) / ADAPTER_FILE
        record = {"seconds": seconds, "timings": manifest["timings"], "changed": TRAININGS[training],
                  "motion_check": manifest["motion_adapter"]["check"],
                  "motion_adapter_trained_now": manifest["motion_adapter"]["trained_now"],
                  "final_loss": manifest["loss_curve"][-1] if manifest["loss_curve"] else None}
        self.report["customizations"][cust].setdefault("trainings", {})[training] = record
        self.report["timings"]["trainings"][f"{cust}/{training}"] = seconds
        print(f"[evidence] {cust}/{training}: {seconds} s, motion check {record['motion_check']}", flush=True)
        return engine.load_customization(self.base, directory, checkpoint, motion_file)

    def sample_row(self, row: Row, custom) -> list[dict]:
        per_video = []
        for p, (shape, colour, direction) in enumerate(self.settings.prompts):
            for seed in self.settings.seeds:
                spec = SampleSpec(prompt=prompt_text(shape, colour, direction), seed=seed, steps=self.settings.steps,
                                  **row.sample)
                start = time.time()
                frames, _ = render_frames(self.base, custom, spec, Reporter())
                self.report["timings"]["video_seconds"] += time.time() - start
                self.report["timings"]["videos"] += 1
                video = to_uint8(frames)
                asked = measures_mod.Asked(shape, colour, direction, True)
                per_video.append({"prompt": p, "seed": seed, "held_out_shape": shape not in TRAIN_SHAPES,
                                  **measures_mod.video_measures(video, self.judge, asked)})
                if seed == self.settings.seeds[0] and p in (0, self._held_out_index()):
                    self.examples.setdefault(row.name, {})[p] = video
        return per_video

    def _held_out_index(self) -> int:
        return next((i for i, p in enumerate(self.settings.prompts) if p[0] not in TRAIN_SHAPES), 0)

    def record(self, cust: str, row: Row, per_video: list[dict]) -> None:
        held = [v for v in per_video if v["held_out_shape"]]
        self.report["results"].setdefault(cust, {})[row.name] = {
            "all": measures_mod.summarize(per_video),
            "held_out_shape": measures_mod.summarize(held) if held else None,
            "per_video": per_video}
        self.write()

    def write(self) -> None:
        timings = self.report["timings"]
        timings["per_video_s"] = round(timings["video_seconds"] / max(1, timings["videos"]), 3)
        timings["elapsed_s"] = round(time.time() - self.started, 1)
        if self.out_json is None:
            return
        self.out_json.parent.mkdir(parents=True, exist_ok=True)
        self.out_json.write_text(json.dumps(self.report, indent=1) + "\n")
        sheets = self.write_sheets()
        write_markdown(self.report, self.out_json.with_suffix(".md"), sheets)

    def write_sheets(self) -> dict[str, str]:
        if self.out_json is None:
            return {}
        out = {}
        for cust in self.report["results"]:
            rows = {f"{name} [p{p}]": np.repeat(np.repeat(video, 2, 1), 2, 2)
                    for name in [r.name for r in ROWS] for p, video in self.examples.get(
                        name if name == "base T2V" else f"{cust}/{name}", {}).items()}
            if rows:
                path = self.out_json.parent / f"{self.out_json.stem}-{cust}.png"
                contact_sheet(rows, path)
                out[cust] = path.name
        return out

    # --- the whole run --------------------------------------------------------------------------------------
    def run(self) -> dict:
        s = self.settings
        rows = [r for r in ROWS if r.name in s.rows]
        per_row_videos = len(s.prompts) * len(s.seeds)
        base_row = next((r for r in rows if r.training is None), None)
        base_results = None
        if base_row is not None:
            base_results = self.sample_row(base_row, None)
            print(f"[evidence] base T2V: {per_row_videos} videos, {self.report['timings']['video_seconds']:.1f} s "
                  f"({self.report['timings']['video_seconds'] / per_row_videos:.2f} s per video)", flush=True)
        trainings_needed = sorted({r.training for r in rows if r.training}, key=list(TRAININGS).index)
        self._plan(rows, trainings_needed)
        for cust in s.customizations:
            self.report["customizations"].setdefault(cust, {})
            checkpoint = self.checkpoint(cust)
            _, parts = load_customized_t2i(self.base.components, checkpoint, self.base.unet_config_dir)
            self.report["customizations"][cust]["drift"] = feature_drift(self.base.components, parts)
            self.report["customizations"][cust]["checkpoint"] = CHECKPOINTS[cust] or "made here (make_stronger)"
            print(f"[evidence] {cust} drift: {self.report['customizations'][cust]['drift']}", flush=True)
            loaded: dict[str, engine.Customization] = {}
            if base_results is not None and base_row is not None:
                self.record(cust, base_row, base_results)
            for row in rows:
                if row.training is None:
                    continue
                if row.training not in loaded:
                    loaded[row.training] = self.train(cust, checkpoint, row.training)
                start = time.time()
                per_video = self.sample_row(row, loaded[row.training])
                self.examples[f"{cust}/{row.name}"] = self.examples.pop(row.name, {})
                self.record(cust, row, per_video)
                print(f"[evidence] {cust} / {row.name}: {time.time() - start:.1f} s; "
                      f"{_brief(self.report['results'][cust][row.name]['all'])}", flush=True)
        self.report["complete"] = True
        self.write()
        return self.report

    def _plan(self, rows: list[Row], trainings: list[str]) -> None:
        s, t = self.settings, self.report["timings"]
        videos = len(s.prompts) * len(s.seeds) * sum(r.training is not None for r in rows) * len(s.customizations)
        plan = {"videos_left": videos, "trainings": len(trainings) * len(s.customizations),
                "video_estimate_s": round(videos * t["video_seconds"] / max(1, t["videos"]), 1)}
        self.report["plan"] = plan
        print(f"[evidence] plan: {plan} (trainings are timed as they run)", flush=True)


def _brief(summary: dict) -> str:
    keys = ("fidelity", "shape_alignment", "displacement_px", "direction_agreement", "artifacts")
    return ", ".join(f"{k} {summary[k]['mean']}" for k in keys)


def _machine() -> dict:
    from bench.harness import machine

    return machine("cpu")


def _jsonable(settings: Settings) -> dict:
    out = asdict(settings)
    out["prompts"] = [list(p) for p in settings.prompts]
    return out


# --- the report -----------------------------------------------------------------------------------------------
TABLE = (("fidelity", "fidelity"), ("shape", "shape_alignment"), ("colour", "colour_alignment"),
         ("px/frame", "displacement_px"), ("direction", "direction_agreement"), ("one object", "one_object"),
         ("area CV", "area_cv"), ("look consistent", "look_consistency"), ("artifacts", "artifacts"))


BUILT = (
    "## What the rows change, as built",
    "",
    "- Motion Adapter scale: `SampleSpec.motion_adapter_scale` / `POST /generate` is the peft weight of the "
    "customization's Motion Adapter at sampling (0 = removed, Still-Moving's test time; the shared one is found "
    "by its cache key, a customized one lives in the artifact).",
    "- Customized Motion Adapter: `TrainSpec.motion_adapter_source=\"customized\"` trains the Motion Adapter on "
    "this customization's frozen videos over its customized spatial layers before the Spatial Adapters; every "
    "training with a Motion Adapter samples one video at scale 1 and 0 and records their pixel motion in the "
    "manifest (`motion_adapter.check`, the trainings table below).",
    "- Prior preservation (the paper's exact form was not retrievable): DreamBooth's form, frozen videos of "
    "base-T2I stills of the preset's generic prompts (`prior_num_images`, seeds after the customized stills') "
    "added to the Spatial Adapters' loss with weight λ (`prior_preservation_weight`); it regularizes the "
    "adapters toward leaving the base world's videos as they were.",
    "- Wider Spatial Adapters: `train_resnets`, `train_feedforward` (`ff.net.*`), `train_projections` "
    "(`proj_in`/`proj_out`) widen the LoRA's targets beyond attention.",
    "- The product's defaults (`TrainSpec`, `MotionAdapterSpec`, the API's) change only where a complete run "
    "supports it: \"The product's defaults, and why\" at the end says what changed and on which rows.",
)

# What the complete run of 2026-12-03 (this report's JSON at that date; rows named as they were then: "Still-Moving"
# was the shared Motion Adapter, "customized Motion Adapter" the one trained per customization) led to.
DECISIONS = (
    "## The product's defaults, and why",
    "",
    "Decided 2026-12-03 from the complete run of that date and the Motion Adapter budget above (numbers: artifacts "
    "= unreadable frames, means over 32 videos; the tables above have their intervals). In that run the rows were "
    "named after the defaults of the time: *Still-Moving* used the shared Motion Adapter, *customized Motion "
    "Adapter* one trained per customization.",
    "",
    "- `MotionAdapterSpec.learning_rate` **1e-3** (was 1e-4): at 1e-4 the Motion Adapter barely froze the base "
    "T2V (scale 1 / 0: 1.07 / 1.63 px/frame), at 1e-3 it does (0.19 / 1.63) at the same cost; batch 8 froze no "
    "better (0.20) at ~4x the time, so `motion_batch_size` stays 1.",
    "- `TrainSpec.motion_adapter_source` / the API's **`customized`** (was `shared`): over the customized spatial "
    "layers the shared adapter freezes far less (the heavy test's LoRA customization: 0.51 / 0.58 px/frame at "
    "scale 1 / 0), and Spatial Adapters trained with it came out worse on every customization; the one trained per "
    "customization gave fewer unreadable frames (full 0.10 vs 0.32, LoRA 0.61 vs 0.87, stronger 0.17 vs 0.56), "
    "better shapes (0.91 vs 0.57, 0.79 vs 0.48, 0.77 vs 0.71) and the same or better look (0.95 vs 0.95, 0.95 "
    "vs 0.91, 0.98 vs 0.88), for one more Motion Adapter training per customization (+40-90 s here). `shared` "
    "stays an option (one adapter per base, no extra training).",
    "- Attention-only Spatial Adapters stay the default: the wider ones (resnets, feed-forward, projections), "
    "trained with the shared Motion Adapter, had fewer unreadable frames on the two full fine-tunes (full 0.21 vs "
    "0.32, stronger 0.39 vs 0.56) but not on the LoRA (0.83 vs 0.87, intervals overlapping), and the customized "
    "Motion Adapter alone did better than them (0.10, 0.17); wider plus a customized Motion Adapter was not run. "
    "For a full fine-tune they are the option to try (`train_resnets`, `train_feedforward`, `train_projections`).",
    "- Prior preservation stays off (weight 0): no measured change on any customization.",
    "- `image_batch_size` **4** (was 1): the same stills 1.7x faster (bench/README.md, \"Batching\").",
    "",
    "What this world does and does not show, measured, not tuned away. Naive injection is not the failure the "
    "paper reports: it keeps the look as well as Still-Moving with the customized Motion Adapter on every "
    "customization (fidelity full / LoRA / stronger 0.96 / 0.93 / 0.98 vs 0.95 / 0.95 / 0.98); Still-Moving has "
    "fewer unreadable frames on each (0.10 / 0.61 / 0.17 vs 0.18 / 0.67 / 0.19) but the intervals overlap, and "
    "the shape is better on the full fine-tune only (0.91 vs 0.75). The stronger fine-tune, whose injected layers "
    "drift more from the base than the committed full fine-tune's (mean relative feature drift 0.38 vs 0.27; the "
    "LoRA's, 0.44, drifts most and reads worst whatever the method), did not break naive injection either: "
    "the paper's artifacts need a customization that moves the spatial features further than these do. Spatial "
    "Adapters trained without the Motion Adapter do not learn static videos here (px/frame about the same as "
    "with it): the base T2V's motion (its motion modules have no text input) is weak and undirected (direction "
    "agreement ~0.1-0.2, chance 0.25), so there is little motion for frozen-video training to suppress.",
)


def _cell(m: dict | None) -> str:
    if not m or m["mean"] is None:
        return "–"
    return f"{m['mean']:.2f} [{m['lo']:.2f}, {m['hi']:.2f}]"


def _overlap(a: dict, b: dict) -> bool:
    return not (a["hi"] < b["lo"] or b["hi"] < a["lo"])


def comparisons(results: dict) -> list[str]:
    """The claims the experiment tests, each read off the table (interval overlap = no measured difference)."""
    claims = [("Still-Moving", "naive injection", "fidelity", "keeps the look at least as well as naive injection"),
              ("Still-Moving", "naive injection", "artifacts", "has fewer unreadable frames than naive injection"),
              ("Still-Moving", "no Motion Adapter", "displacement_px", "moves more than without the Motion Adapter"),
              ("Motion Adapter scale 1", "Still-Moving", "displacement_px", "scale 1 moves less than scale 0"),
              ("Motion Adapter scale -1", "Still-Moving", "displacement_px", "scale -1 moves more than scale 0"),
              ("Still-Moving", "base T2V", "direction_agreement", "follows the named direction like the base")]
    lines = []
    for a, b, measure, claim in claims:
        if a not in results or b not in results:
            continue
        x, y = results[a]["all"][measure], results[b]["all"][measure]
        if x["mean"] is None or y["mean"] is None:
            lines.append(f"- *{claim}*: {measure} is undefined for {a if x['mean'] is None else b} (no video "
                         "where it can be read, e.g. no two consecutive frames with one object)")
            continue
        verdict = "no measured difference (intervals overlap)" if _overlap(x, y) else \
            f"{a} {'higher' if x['mean'] > y['mean'] else 'lower'}"
        lines.append(f"- *{claim}*: {measure} {a} {_cell(x)} vs {b} {_cell(y)}: {verdict}")
    return lines


def write_markdown(report: dict, path: Path, sheets: dict[str, str]) -> Path:
    settings, t = report["settings"], report["timings"]
    state = "complete" if report["complete"] else "**partial** (the run was cut short or is still running)"
    m = report["machine"]
    lines = [
        "# Evidence: does Still-Moving work on the shapes world?", "",
        f"Generated by `{report['command']}` on {report['date']} ({state}); machine: {m['cpu']}, {m['cores']} cores, "
        f"torch {m['torch']}, diffusers {m['diffusers']}, peft {m['peft']}; load average at start "
        f"{m['loadavg_1m_start']}. Elapsed {t['elapsed_s']} s; {t['videos']} videos at {t['per_video_s']} s each; "
        f"trainings (s): {json.dumps(t['trainings'])}.", "",
        f"Prompts ({len(report['prompts'])}, x {len(settings['seeds'])} seeds per row): "
        + "; ".join(f"`{p}`" for p in report["prompts"])
        + f". The customizations train on {len(report['train_prompts'])} prompts naming circles and squares "
        f"(`{report['train_prompts'][0]}` ...), no motion; held-out shape: {', '.join(report['held_out_shapes'])}. "
        f"Sampling: {report['sampling']['steps']} DDIM steps at guidance {report['sampling']['guidance_scale']}.", "",
        "Measures (`engine/shapes/measures.py`, from the judge and the analytic object reading): fidelity = share "
        "of frames with the new look; shape / colour = share of frames with the prompt's; px/frame = mean centroid "
        "displacement per frame; direction = share of videos whose track moves as the prompt names; one object = "
        "share of frames with exactly one object; area CV = the object's area std / mean; look consistent = share "
        "of frames with the video's majority look; artifacts = share of frames the judge cannot read. Each cell: "
        "mean over videos [95% bootstrap interval].", "",
        "## Rows", "", *[f"- **{name}**: {what}" for name, what in report["rows"].items()], "",
        *BUILT, "",
    ]
    for cust, rows in report["results"].items():
        info = report["customizations"].get(cust, {})
        drift = info.get("drift", {})
        lines += [f"## {cust} ({info.get('checkpoint', '')})", ""]
        if "finetune" in info:
            lines += [f"Made here: `dreambooth.finetune` {json.dumps(info['finetune'])}.", ""]
        if drift:
            lines += [f"Feature drift of the injected layers vs the base (relative L2 of their outputs on two-tone "
                      f"stills): mean {drift['mean']}, " + ", ".join(
                          f"{k} {drift[k]}" for k in ("self_attention", "cross_attention", "feed_forward", "resnet")
                          if k in drift) + f"; noise prediction {drift['noise_prediction']}.", ""]
        lines += ["| row | " + " | ".join(h for h, _ in TABLE) + " |", "|---" * (len(TABLE) + 1) + "|"]
        for name, result in rows.items():
            lines.append(f"| {name} | " + " | ".join(_cell(result["all"][k]) for _, k in TABLE) + " |")
        lines += ["", "Held-out shape only:", "", "| row | fidelity | shape | direction | artifacts |",
                  "|---|---|---|---|---|"]
        for name, result in rows.items():
            held = result["held_out_shape"]
            if held:
                lines.append(f"| {name} | " + " | ".join(_cell(held[k]) for k in (
                    "fidelity", "shape_alignment", "direction_agreement", "artifacts")) + " |")
        trainings = info.get("trainings", {})
        if trainings:
            lines += ["", "| training | changed | seconds | motion at MA scale 1 / 0 (manifest) | final loss |",
                      "|---|---|---|---|---|"]
            for name, tr in trainings.items():
                check = tr["motion_check"]
                motion = f"{check['motion_at_scale_1']} / {check['motion_at_scale_0']}" if check else "–"
                lines.append(f"| {name} | `{json.dumps(tr['changed'])}` | {tr['seconds']} | {motion} | "
                             f"{tr['final_loss']} |")
        lines += ["", "What the table says:", "", *comparisons(rows), ""]
        if cust in sheets:
            lines += [f"![{cust}: one frame row per method, prompts p0 and the first held-out shape]({sheets[cust]})", ""]
    lines += motion_budget_section(path.parent / MOTION_BUDGET_REPORT)
    lines += control_section(path.parent / CONTROL_REPORT)
    lines += [*DECISIONS, ""]
    path.write_text("\n".join(lines) + "\n")
    return path


CONTROL_REPORT = "control-evidence.json"  # `engine.shapes.control_eval`'s report, beside this one
MOTION_BUDGET_REPORT = "motion-adapter-budget.json"  # `engine.shapes.motion_adapter_budget`'s, beside this one


def motion_budget_section(report_path: Path) -> list[str]:
    """The Motion Adapter's training recipes (what `MotionAdapterSpec`'s defaults rest on): each recipe's motion at
    sampling scales 1 / 0 / -1 on the base T2V, read from its own report (its own command and budget)."""
    lines = ["## Motion Adapter budget: does it freeze motion?", ""]
    if not report_path.exists():
        return lines + [f"Not measured: no `{report_path.name}` beside this report (`python -m "
                        "engine.shapes.motion_adapter_budget` writes it).", ""]
    budget = json.loads(report_path.read_text())
    scales = [str(s) for s in budget["scales"]]
    lines += [f"From `python -m engine.shapes.motion_adapter_budget` (`{report_path.name}`): each `MotionAdapterSpec` "
              "recipe (fixed before the first run) trains the shared Motion Adapter on the shapes base's frozen "
              "videos, which then samples the base T2V alone (no Spatial Adapters) at Motion Adapter scale "
              f"{' / '.join(scales)} over {len(budget['prompts'])} moving prompts x {len(budget['seeds'])} seeds, "
              f"{budget['sampling_steps']} steps. Cells: centroid px/frame [95% bootstrap interval]. The issue's bar: "
              "scale 1 under half of scale 0 (near-static), scale -1 above scale 0.", "",
              "| recipe | lr | batch | steps | train s | loss first / last 10 | " + " | ".join(
                  f"px/frame at {s}" for s in scales) + " | bar |", "|---" * (7 + len(scales)) + "|"]
    for name, r in budget["recipes"].items():
        moved, spec = r["displacement_px"], r["spec"]
        one, zero, minus = (moved[s]["mean"] for s in ("1.0", "0.0", "-1.0"))
        bar = "met" if None not in (one, zero, minus) and one < 0.5 * zero and minus > zero else "missed"
        lines.append(f"| {name} | {spec['learning_rate']:g} | {spec['batch_size']} | {spec['train_steps']} | "
                     f"{r['train_seconds']} | {r['loss_first_10']} / {r['loss_last_10']} | "
                     + " | ".join(_cell(moved[s]) for s in scales) + f" | {bar} |")
    lines += ["", *(f"Not run: *{name}*: {why}." for name, why in budget.get("not_run", {}).items())]
    return lines + [""]


def control_section(report_path: Path) -> list[str]:
    """The ControlNet row (the paper's conditional task): `control_eval`'s measured runs, read from its report, not
    run again here (its own command, its own budget)."""
    lines = ["## Under a ControlNet (canny), driven by a reference video", ""]
    if not report_path.exists():
        return lines + [f"Not measured: no `{report_path.name}` beside this report (`python -m "
                        "engine.shapes.control_eval` writes it).", ""]
    control = json.loads(report_path.read_text())
    conf = control["settings"]
    lines += [f"From `python -m engine.shapes.control_eval` (`{report_path.name}`): {conf['videos']} reference videos "
              f"of a base-look object on paths the text does not name ({conf['paths']}); prompt "
              f"`{conf['prompt']}`; {conf['steps']} steps at guidance {conf['guidance_scale']}, control scale "
              f"{conf['control_scale']}; customization {conf['customization']['checkpoint']}. IoU: the sample's "
              "object mask against the reference's, per frame.", "",
              "| run | mean IoU | two-tone frames | readable frames | shape frames | colour frames |",
              "|---|---|---|---|---|---|"]
    for name, run in control["runs"].items():
        lines.append(f"| {name} | {run['mean_iou']:.2f} | {run['look_two_tone_frames']:.2f} | "
                     f"{run['readable_frames']:.2f} | {run['shape_frames']:.2f} | {run['colour_frames']:.2f} |")
    return lines + [""]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="the test-sized version (one customization, ...)")
    parser.add_argument("--customizations", nargs="+", choices=list(CHECKPOINTS))
    parser.add_argument("--rows", nargs="+", choices=[r.name for r in ROWS], help="only these rows")
    parser.add_argument("--out", type=Path, default=DOCS / "evidence.json")
    parser.add_argument("--workdir", type=Path, help="keep trainings here (default: a temporary directory)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rewrite-md", action="store_true", help="only rewrite the Markdown from the JSON at --out")
    args = parser.parse_args(argv)
    if args.rewrite_md:
        report = json.loads(args.out.read_text())
        sheets = {c: f"{args.out.stem}-{c}.png" for c in report["results"]
                  if (args.out.parent / f"{args.out.stem}-{c}.png").exists()}
        print(f"[evidence] wrote {write_markdown(report, args.out.with_suffix('.md'), sheets)}")
        return
    torch.set_num_threads(args.threads)
    settings = SMALL if args.small else FULL
    if args.customizations:
        settings = replace(settings, customizations=tuple(args.customizations))
    if args.rows:
        settings = replace(settings, rows=tuple(args.rows))
    command = "python -m engine.shapes.evidence " + shlex.join(sys.argv[1:] if argv is None else argv)
    with tempfile.TemporaryDirectory() as tmp:
        Run(settings, args.workdir or Path(tmp), args.out, command.strip()).run()
    print(f"[evidence] wrote {args.out} and {args.out.with_suffix('.md')}", flush=True)


if __name__ == "__main__":
    main()
