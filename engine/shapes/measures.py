"""What a shapes-world video shows, measured against what its prompt asked: the evidence experiment's measures.

Every measure comes from the world's truth, not from a learned similarity: the judge's heads (shape, colour,
look, readable) and its analytic object reading (count, area, centroid track). Per video (uint8 (F, H, W, 3)):

* fidelity: share of frames the judge reads with the new look (two-tone);
* shape / colour alignment: share of frames whose shape / colour is the prompt's;
* displacement: mean centroid displacement per frame in pixels, over consecutive frames that each hold exactly
  one object (None without such a pair);
* direction agreement: 1 when the track moves as the prompt names (`judge.moves_as_named`), else 0;
* one object: share of frames holding exactly one object; area CV: std / mean of the object's area over
  frames (0 = stable); look consistency: share of frames with the video's majority look;
* artifacts: share of frames the judge cannot read (`Judge.read`'s readable).

Means over videos come with a 95% percentile-bootstrap interval (`bootstrap`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from engine import metrics
from engine.shapes import judge as judge_mod
from engine.shapes import world

MEASURES = ("fidelity", "shape_alignment", "colour_alignment", "displacement_px", "direction_agreement",
            "one_object", "area_cv", "look_consistency", "artifacts", "pixel_motion")
_PROMPT = re.compile(r"\b(?P<token>%s )?(?P<colour>%s) (?P<shape>%s)\b(?: (?:moving (?P<dir>%s)|(?P<still>standing still)))?"
                     % (world.TOKEN, "|".join(world.COLOURS), "|".join(world.SHAPES),
                        "|".join(d for d in world.DIRECTIONS if d != "still")))


@dataclass(frozen=True)
class Asked:
    """What a prompt of the world asks for; None where it does not say."""

    shape: str | None
    colour: str | None
    direction: str | None
    two_tone: bool


def parse_prompt(prompt: str) -> Asked:
    """'a sks red circle moving left' -> Asked('circle', 'red', 'left', True); a prompt outside the world's
    grammar asks for nothing it can check."""
    match = _PROMPT.search(prompt)
    if match is None:
        return Asked(None, None, None, world.TOKEN in prompt.split())
    direction = "still" if match["still"] else match["dir"]
    return Asked(match["shape"], match["colour"], direction, bool(match["token"]))


def video_measures(frames: np.ndarray, judge: judge_mod.Judge, asked: Asked) -> dict[str, float | None]:
    """The measures of one video; a measure the prompt cannot be checked for (or a video with no object to
    track) is None."""
    read = judge.read(frames)

    def share(values) -> float:
        return float(np.mean(values)) if len(values) else 0.0

    cents = read["centroid"]
    single = [c if k == 1 else None for c, k in zip(cents, read["objects"])]  # a blob's centroid is no object's
    steps = [np.hypot(b[0] - a[0], b[1] - a[1]) for a, b in zip(single[:-1], single[1:])
             if a is not None and b is not None]
    areas = np.array([a for a, c in zip(read["area"], read["objects"]) if c >= 1], dtype=np.float64)
    majority = max(set(read["look"]), key=read["look"].count)
    return {
        "fidelity": share([v == "two-tone" for v in read["look"]]),
        "shape_alignment": None if asked.shape is None else share([v == asked.shape for v in read["shape"]]),
        "colour_alignment": None if asked.colour is None else share([v == asked.colour for v in read["colour"]]),
        "displacement_px": float(np.mean(steps)) if steps else None,
        "direction_agreement": None if asked.direction is None else
        float(judge_mod.moves_as_named(cents, asked.direction)),
        "one_object": share([c == 1 for c in read["objects"]]),
        "area_cv": float(areas.std() / areas.mean()) if len(areas) >= 2 and areas.mean() > 0 else None,
        "look_consistency": share([v == majority for v in read["look"]]),
        "artifacts": 1.0 - share([float(r) for r in read["readable"]]),
        "pixel_motion": metrics.motion(frames),
    }


def bootstrap(values, reps: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """Mean of the non-None values and its percentile-bootstrap interval (resampling videos)."""
    data = np.array([v for v in values if v is not None], dtype=np.float64)
    if len(data) == 0:
        return {"mean": None, "lo": None, "hi": None, "n": 0}
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, len(data), (reps, len(data)))].mean(1)
    tail = (1 - level) / 2 * 100
    return {"mean": round(float(data.mean()), 4), "lo": round(float(np.percentile(means, tail)), 4),
            "hi": round(float(np.percentile(means, 100 - tail)), 4), "n": int(len(data))}


def summarize(per_video: list[dict]) -> dict:
    """Every measure's mean and 95% interval over the videos."""
    return {name: bootstrap([v[name] for v in per_video]) for name in MEASURES}
