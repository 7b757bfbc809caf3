"""Metrics on constructed videos with known answers, and the evaluation report end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from engine import metrics
from engine.evaluation import ROWS, evaluate
from engine.export import read_video


def _image(seed: int, size: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def test_static_video_has_zero_motion_and_full_consistency():
    video = np.stack([_image(0)] * 6)
    assert metrics.motion(video) == 0.0
    assert abs(metrics.temporal_consistency(video) - 1.0) < 1e-6


def test_changing_video_has_motion_and_lower_consistency():
    video = np.stack([_image(i) for i in range(6)])
    assert metrics.motion(video) > 0.2
    assert abs(metrics.temporal_consistency(video)) < 0.2
    slow = np.stack([np.roll(_image(0), shift, axis=1) for shift in range(6)])
    assert 0 < metrics.motion(slow) < 0.5


def test_video_of_the_reference_has_maximal_fidelity():
    refs = [_image(1), _image(2)]
    assert metrics.fidelity_proxy(np.stack([refs[0], refs[1], refs[0]]), refs) == 1.0
    unrelated = metrics.fidelity_proxy(np.stack([_image(9)] * 3), refs)
    assert unrelated < 0.8


def test_evaluate_writes_contact_sheet_and_metrics(base, trained, checkpoints, tmp_path):
    _, out_dir, _ = trained
    stages: list[str] = []
    report = evaluate(base, out_dir, checkpoints["lora"], "a sks toy", tmp_path / "eval", seed=1, steps=2,
                      progress=lambda stage, step, total: stages.append(stage))
    assert list(report["metrics"]) == list(ROWS)
    assert "ablation_train" in stages and "train" not in stages  # the ablation's stages are named as such
    assert [s for s in dict.fromkeys(stages) if s.startswith("render_")] == [f"render_{row}" for row in ROWS]
    frames_of = {name: read_video(Path(files["video"])).shape[0] for name, files in report["videos"].items()}
    assert frames_of == {row: report["num_frames"] for row in ROWS} and report["ablation_trained"] is True
    sheet = Image.open(tmp_path / "eval" / "contact_sheet.png")
    frames = trained[0]["resolved"]["num_frames"]
    assert sheet.size[1] == 4 * 32 and sheet.size[0] >= frames * 32
    assert len(set(np.asarray(sheet).reshape(-1, 3)[:, 0].tolist())) > 10
    on_disk = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert on_disk["metrics"] == report["metrics"]
    for row in report["metrics"].values():
        assert 0 <= row["motion"] <= 1 and 0 <= row["fidelity_proxy"] <= 1
    assert report["metrics"]["base"] != report["metrics"]["naive"]
    stages.clear()  # again in the same directory: the ablation there is reused, the rows are the same
    again = evaluate(base, out_dir, checkpoints["lora"], "a sks toy", tmp_path / "eval", seed=1, steps=2,
                     progress=lambda stage, step, total: stages.append(stage))
    assert again["ablation_trained"] is False and not any(s.startswith("ablation_") for s in stages)
    assert again["metrics"] == report["metrics"]


def _tiny_clip(directory):
    """Random-weight CLIP saved like a hub checkpoint (model, tokenizer, image processor)."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    from engine.tiny_models import write_tiny_tokenizer

    config = CLIPConfig(
        text_config=dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                         vocab_size=1000, max_position_embeddings=77),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                           image_size=32, patch_size=8),
        projection_dim=16)
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(directory)
    write_tiny_tokenizer(directory)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(directory)
    return directory


def test_clip_scores_are_maximal_for_the_reference_and_added_to_the_report(base, trained, checkpoints, tmp_path):
    from engine.clip_scores import ClipScorer

    scorer = ClipScorer.load(str(_tiny_clip(tmp_path / "clip")), local_files_only=True)
    one = [Image.fromarray(_image(1))]
    same = scorer.scores(np.stack([_image(1), _image(1)]), one, "a toy")
    other = scorer.scores(np.stack([_image(7), _image(8)]), one, "a toy")
    assert abs(same["clip_i"] - 1.0) < 1e-5 and other["clip_i"] < same["clip_i"]
    refs = one + [Image.fromarray(_image(2))]  # CLIP-I is the mean over (frame, reference) pairs, not a best match
    copy = scorer.scores(np.stack([_image(1), _image(1)]), refs, "a toy")
    frames, embedded = scorer.image_embeddings(one * 2), scorer.image_embeddings(refs)
    assert abs(copy["clip_i"] - float((frames @ embedded.T).mean())) < 1e-6 and copy["clip_i"] < same["clip_i"]
    assert -1 <= same["clip_t"] <= 1
    report = evaluate(base, trained[1], checkpoints["lora"], "a sks toy", tmp_path / "eval", steps=1,
                      clip_model=str(tmp_path / "clip"), local_files_only=True)
    assert all({"clip_i", "clip_t"} <= set(row) for row in report["metrics"].values())


def test_world_measures_read_a_generator_video_against_its_prompt():
    """On the shapes world the evaluation adds the judge's measures (`world_*`); a red two-tone circle moving right
    scores full marks for that prompt and none for another shape, colour and direction."""
    from engine.evaluation import world_measures
    from engine.shapes import judge as judge_mod
    from engine.shapes import world
    from engine.shapes.paths import JUDGE_DIR

    judge = judge_mod.Judge.load(JUDGE_DIR)
    video = world.video_sample(np.random.default_rng(0), look="two-tone", direction="right", shape="circle",
                               colour="red").frames
    right = world_measures(video, judge, "a sks red circle moving right")
    assert right["world_fidelity"] == right["world_shape_alignment"] == right["world_colour_alignment"] == 1.0
    assert right["world_direction_agreement"] == 1.0 and right["world_artifacts"] == 0.0
    wrong = world_measures(video, judge, "a blue square moving left")
    assert wrong["world_shape_alignment"] == wrong["world_colour_alignment"] == wrong["world_direction_agreement"] == 0
    free = world_measures(video, judge, "a photo of a dog")
    assert "world_shape_alignment" not in free and "world_direction_agreement" not in free
    assert all(isinstance(v, float) for v in free.values())
