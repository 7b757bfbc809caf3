"""The evidence experiment's measures on generator videos whose answers are known, and its small version end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest

from engine.shapes import judge as judge_mod
from engine.shapes import measures, world
from engine.shapes.paths import JUDGE_DIR


@pytest.fixture(scope="module")
def judge():
    return judge_mod.Judge.load(JUDGE_DIR)


def _video(direction: str, look: str = "two-tone", shape: str = "circle", colour: str = "red", seed: int = 0):
    sample = world.video_sample(np.random.default_rng(seed), look=look, direction=direction, shape=shape,
                                colour=colour)
    return sample


@pytest.mark.parametrize("direction", ["left", "right", "up", "down"])
def test_a_generator_video_scores_as_what_it_shows(judge, direction):
    sample = _video(direction)
    m = measures.video_measures(sample.frames, judge, measures.Asked("circle", "red", direction, True))
    assert m["fidelity"] == 1.0 and m["shape_alignment"] == 1.0 and m["colour_alignment"] == 1.0
    assert m["direction_agreement"] == 1.0 and m["one_object"] == 1.0 and m["artifacts"] == 0.0
    assert m["look_consistency"] == 1.0 and m["area_cv"] < 0.05
    assert abs(m["displacement_px"] - sample.scene.speed) < 0.3, "the centroid moves at the scene's speed"
    opposite = {"left": "right", "right": "left", "up": "down", "down": "up"}[direction]
    wrong = measures.video_measures(sample.frames, judge, measures.Asked("square", "blue", opposite, True))
    assert wrong["shape_alignment"] == 0.0 and wrong["colour_alignment"] == 0.0
    assert wrong["direction_agreement"] == 0.0


def test_still_plain_and_unreadable_videos(judge):
    still = _video("still", look="plain", shape="triangle", colour="green")
    m = measures.video_measures(still.frames, judge, measures.Asked("triangle", "green", "still", False))
    assert m["fidelity"] == 0.0 and m["displacement_px"] == 0.0 and m["direction_agreement"] == 1.0
    assert m["pixel_motion"] == 0.0
    moving = measures.video_measures(still.frames, judge, measures.Asked("triangle", "green", "right", False))
    assert moving["direction_agreement"] == 0.0
    noise = np.random.default_rng(3).integers(0, 256, still.frames.shape, dtype=np.uint8)
    m = measures.video_measures(noise, judge, measures.Asked("triangle", "green", "still", False))
    assert m["artifacts"] == 1.0
    empty = np.zeros_like(still.frames) + np.array(world.BACKGROUND, dtype=np.uint8)
    m = measures.video_measures(empty, judge, measures.Asked("triangle", "green", "up", False))
    assert m["one_object"] == 0.0 and m["displacement_px"] is None and m["area_cv"] is None
    assert m["direction_agreement"] == 0.0 and m["artifacts"] == 1.0


def test_parse_prompt_reads_the_worlds_grammar():
    assert measures.parse_prompt("a sks red circle moving left") == measures.Asked("circle", "red", "left", True)
    assert measures.parse_prompt("a blue square standing still") == measures.Asked("square", "blue", "still", False)
    assert measures.parse_prompt("a sks yellow triangle") == measures.Asked("triangle", "yellow", None, True)
    assert measures.parse_prompt("a photo of a dog") == measures.Asked(None, None, None, False)


def test_bootstrap_interval_holds_the_mean_and_narrows_with_agreement():
    wide = measures.bootstrap([0.0, 1.0] * 8)
    assert wide["lo"] < wide["mean"] == 0.5 < wide["hi"] and wide["n"] == 16
    same = measures.bootstrap([0.7] * 10)
    assert same["lo"] == same["mean"] == same["hi"] == 0.7
    assert measures.bootstrap([None, None])["mean"] is None
    assert measures.bootstrap([1.0, None, 0.0])["n"] == 2


QUICK_ROWS = ["base T2V", "naive injection", "Still-Moving", "Motion Adapter scale 1"]  # one training


def _small_report(tmp_path, rows: list[str] | None):
    from engine.shapes import evidence

    out = tmp_path / "evidence.json"
    evidence.main(["--small", "--out", str(out), "--threads", "1", *(["--rows", *rows] if rows else [])])
    return json.loads(out.read_text()), out


def _check_structure(report: dict, out, rows: list[str]) -> None:
    from engine.shapes import evidence

    assert report["complete"] is True and report["settings"]["customizations"] == ["lora"]
    results = report["results"]["lora"]
    assert list(results) == rows
    for row in results.values():
        assert set(row["all"]) == set(measures.MEASURES) and row["all"]["fidelity"]["n"] == 4
        assert len(row["per_video"]) == 4 and row["held_out_shape"]["fidelity"]["n"] == 2
        interval = row["all"]["artifacts"]
        assert interval["lo"] <= interval["mean"] <= interval["hi"]
    trainings = report["customizations"]["lora"]["trainings"]
    assert set(trainings) == {r.training for r in evidence.ROWS if r.name in rows and r.training}
    assert trainings["defaults"]["motion_check"]["motion_at_scale_1"] >= 0
    drift = report["customizations"]["lora"]["drift"]
    assert drift["mean"] > 0 and drift["noise_prediction"] > 0
    assert report["timings"]["videos"] == 4 * len(rows) and report["timings"]["per_video_s"] > 0
    assert {"cpu", "cores"} <= set(report["machine"]) and report["command"].startswith("python -m engine.shapes")
    text = out.with_suffix(".md").read_text()
    assert "| Still-Moving |" in text and "evidence-lora.png" in text and "(complete)" in text
    assert "scale 1 moves less than scale 0" in text, "the comparisons are read off the table"
    assert (out.parent / "evidence-lora.png").exists()


def test_the_small_experiment_writes_its_report(tmp_path):
    """One customization, two prompts, two seeds, a few steps, the rows of one training: every row is measured;
    the JSON, the Markdown (tables, comparisons) and the contact sheet are written."""
    from engine.shapes import evidence

    report, out = _small_report(tmp_path, QUICK_ROWS)
    _check_structure(report, out, QUICK_ROWS)
    written = out.with_suffix(".md").read_text()
    evidence.main(["--rewrite-md", "--out", str(out)])
    assert out.with_suffix(".md").read_text() == written, "the Markdown is a function of the JSON and the sheets"


def test_the_control_row_is_read_from_the_control_report_beside_it(tmp_path):
    """The ControlNet row comes from `control_eval`'s report next to this one: each of its runs a table line with
    its measured numbers; without that report the section says it was not measured (never invented)."""
    from engine.shapes import evidence

    assert "Not measured" in "\n".join(evidence.control_section(tmp_path / evidence.CONTROL_REPORT))
    run = {"mean_iou": 0.8238, "look_two_tone_frames": 0.0625, "readable_frames": 0.9609, "shape_frames": 0.75,
           "colour_frames": 0.9766}
    settings = {"videos": 16, "paths": "diagonal", "prompt": "a sks {colour} {shape}", "steps": 25,
                "guidance_scale": 3.0, "control_scale": 1.0, "customization": {"checkpoint": "full.safetensors"}}
    (tmp_path / evidence.CONTROL_REPORT).write_text(json.dumps({"settings": settings, "runs": {
        "naive with control": run, "naive without control": {**run, "mean_iou": 0.2187}}}))
    lines = evidence.control_section(tmp_path / evidence.CONTROL_REPORT)
    assert "| naive with control | 0.82 | 0.06 | 0.96 | 0.75 | 0.98 |" in lines
    assert "| naive without control | 0.22 | 0.06 | 0.96 | 0.75 | 0.98 |" in lines
    assert any("16 reference videos" in line and "full.safetensors" in line for line in lines)


def test_the_motion_adapter_budget_writes_each_recipe_with_its_spec_and_motion(tmp_path):
    """`python -m engine.shapes.motion_adapter_budget`, a few steps: each recipe asked for is trained with its
    overrides, sampled at every scale over the same prompts and seeds, and written with what it measured."""
    from engine.shapes import motion_adapter_budget as budget

    names = [budget.RECIPES[0][0], budget.RECIPES[2][0]]
    out = tmp_path / "budget.json"
    report = budget.main(["--recipes", *names, "--prompts", "1", "--seeds", "1", "--steps", "2", "--train-steps", "2",
                          "--num-images", "2", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    assert list(report["recipes"]) == names and report["sampling_steps"] == 2
    first, batched = (report["recipes"][n] for n in names)
    for recipe, (_, overrides) in ((first, budget.RECIPES[0]), (batched, budget.RECIPES[2])):
        assert {k: recipe["spec"][k] for k in overrides} == overrides  # the recipe's own settings were trained
    assert batched["spec"]["batch_size"] != first["spec"]["batch_size"]
    for recipe in (first, batched):
        assert recipe["spec"]["train_steps"] == 2 and recipe["train_seconds"] > 0
        assert set(recipe["displacement_px"]) == {str(s) for s in budget.SCALES}
        for scale in recipe["displacement_px"].values():
            assert len(scale["values"]) == 1 and {"mean", "lo", "hi", "n"} <= set(scale)
    from engine.shapes.evidence import motion_budget_section

    table = [line for line in motion_budget_section(out) if line.startswith("| ") and "recipe" not in line]
    assert [line.split(" | ")[0][2:] for line in table] == names  # a row per recipe, in the evidence report
    assert all(line.endswith(("| met |", "| missed |")) for line in table)


@pytest.mark.heavy
def test_the_small_experiment_with_every_row(tmp_path):
    """Every row and training of the experiment at the small size; the trainings record their Motion Adapter
    checks (none without one)."""
    from engine.shapes import evidence

    rows = [r.name for r in evidence.ROWS]
    report, out = _small_report(tmp_path, None)
    _check_structure(report, out, rows)
    trainings = report["customizations"]["lora"]["trainings"]
    assert trainings["no-motion-adapter"]["motion_check"] is None
    assert trainings["shared-motion-adapter"]["motion_check"] is not None


@pytest.mark.heavy
def test_motion_adapter_scale_freezes_and_adds_motion_on_the_model_it_was_trained_on(tmp_path, judge):
    """The issue's claims for `motion_adapter_scale` on the shapes world, with the product's shared Motion Adapter
    (`MotionAdapterSpec` defaults) over the base T2V it was trained on: scale 1 moves the object less than half as
    far per frame as scale 0 (near-static), scale -1 further than scale 0. (At the earlier learning rate, 1e-4,
    scale 1 still moved 1.07 px/frame against 1.63; over a customization's spatial layers the shared adapter
    freezes much less, which is what `motion_adapter_source="customized"` is for: docs/evidence.md.)"""
    import engine
    from engine.motion_adapter import ensure_motion_adapter
    from engine.progress import Reporter
    from engine.shapes import motion_adapter_budget as budget

    base = engine.load_base_models(engine.ModelSpec(preset="shapes"), tmp_path / "base")
    path, _ = ensure_motion_adapter(base, engine.TrainSpec(prompts=("a red circle",)), tmp_path / "cache", Reporter())
    moved = budget.measure(base, budget.base_with_motion_adapter(base, path), judge, budget.PROMPTS[:4], (0, 1), None)
    one, zero, minus = (moved[str(s)]["mean"] for s in (1.0, 0.0, -1.0))
    assert one < 0.5 * zero, moved
    assert minus > zero, moved
