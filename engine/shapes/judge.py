"""The judge: reads a frame's shape, colour and look (a small CNN trained only on generator output) and
measures its objects analytically (mask, count, centroid, area), so model samples can be scored
against the world's truth.

A frame is *readable* when it holds exactly one object of a size the world makes and the classifier is
confident in all three heads; videos also get a centroid track and the direction it moves in.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from engine.shapes import loop, world

HEADS = {"shape": list(world.SHAPES), "colour": list(world.COLOURS), "look": list(world.LOOKS)}
FOREGROUND_THRESHOLD = 45  # max channel difference from the background that makes a pixel "object"
MIN_OBJECT_PIXELS = 6
CONFIDENCE = 0.6
# The world's objects cover 50 (a triangle of extent 10) to 225 pixels (a square of 15); a region far outside
# that range is not an object of this world (noise, a smear, a fused blob).
AREA_RANGE = (0.5 * 0.5 * world.SIZE_RANGE[0] ** 2, 1.5 * world.SIZE_RANGE[1] ** 2)
MOVE_MIN_PX = 4.0  # net displacement along the named direction that counts as moving that way
STILL_MAX_PX = 2.0  # a "still" object's centroid stays within this of its mean position


class JudgeNet(nn.Module):
    """Three conv stages and one linear head per attribute."""

    def __init__(self, width: int = 32):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(3, w, 3, padding=1), nn.GELU(), nn.Conv2d(w, w, 3, padding=1), nn.GELU(), nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.GELU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.GELU(), nn.AdaptiveMaxPool2d(1), nn.Flatten(),
        )
        self.heads = nn.ModuleDict({name: nn.Linear(2 * w, len(labels)) for name, labels in HEADS.items()})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.features(x)
        return {name: head(h) for name, head in self.heads.items()}


@dataclass
class Judge:
    """The trained classifier; `read` takes uint8 frames (N, H, W, 3)."""

    net: JudgeNet

    @torch.no_grad()
    def probabilities(self, frames: np.ndarray) -> dict[str, np.ndarray]:
        x = torch.from_numpy(np.ascontiguousarray(frames)).float().div(127.5).sub(1).permute(0, 3, 1, 2)
        out = {name: [] for name in HEADS}
        for i in range(0, len(x), 256):
            for name, logits in self.net(x[i:i + 256]).items():
                out[name].append(logits.softmax(-1))
        return {name: torch.cat(v).numpy() for name, v in out.items()}

    def read(self, frames: np.ndarray) -> dict[str, list]:
        """Per frame: label and confidence of each head, object count, centroid, area, readable."""
        probs = self.probabilities(frames)
        result: dict[str, list] = {}
        for name, labels in HEADS.items():
            result[name] = [labels[i] for i in probs[name].argmax(-1)]
            result[f"{name}_confidence"] = probs[name].max(-1).round(4).tolist()
        objects = [measure(frame) for frame in frames]
        result["objects"] = [o.count for o in objects]
        result["centroid"] = [o.centroid for o in objects]
        result["area"] = [o.area for o in objects]
        result["readable"] = [
            o.count == 1 and AREA_RANGE[0] <= o.area <= AREA_RANGE[1]
            and all(result[f"{n}_confidence"][i] >= CONFIDENCE for n in HEADS)
            for i, o in enumerate(objects)
        ]
        return result

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.net.state_dict().items()}, str(directory / "judge.safetensors"),
                  metadata={"format": "pt"})
        (directory / "config.json").write_text(json.dumps({"heads": HEADS, "width": self.net.features[0].out_channels}))

    @classmethod
    def load(cls, directory: Path) -> "Judge":
        config = json.loads((Path(directory) / "config.json").read_text())
        net = JudgeNet(config["width"])
        net.load_state_dict(load_file(str(Path(directory) / "judge.safetensors")))
        return cls(net.eval())


@dataclass(frozen=True)
class Objects:
    """The analytic reading of one frame: connected foreground regions and the largest one's centroid."""

    count: int
    centroid: tuple[float, float] | None
    area: int
    mask: np.ndarray


def background_difference(frame: np.ndarray) -> np.ndarray:
    """Per pixel, the largest channel difference from the world's background (H, W) int16."""
    return np.abs(frame.astype(np.int16) - np.array(world.BACKGROUND, dtype=np.int16)).max(-1)


def foreground(frame: np.ndarray) -> np.ndarray:
    """Pixels that differ from the world's background (H, W) bool."""
    return background_difference(frame) > FOREGROUND_THRESHOLD


def measure(frame: np.ndarray) -> Objects:
    """Count objects (8-connected regions of at least `MIN_OBJECT_PIXELS`) and locate the largest."""
    mask = foreground(frame)
    n, labels, stats, cents = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    big = [i for i in range(1, n) if stats[i, cv2.CC_STAT_AREA] >= MIN_OBJECT_PIXELS]
    if not big:
        return Objects(0, None, 0, np.zeros_like(mask))
    top = max(big, key=lambda i: stats[i, cv2.CC_STAT_AREA])
    return Objects(len(big), (float(cents[top][0]), float(cents[top][1])), int(stats[top, cv2.CC_STAT_AREA]),
                   labels == top)


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two (H, W) bool masks; two empty masks agree (1.0)."""
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def frame_ious(frames: np.ndarray, masks: np.ndarray) -> list[float]:
    """Per frame, the IoU of the largest object's mask in each (H, W, 3) uint8 frame (`measure`) against the
    given (H, W) bool mask: how well a generated object covers a reference's (no object: 0 unless both empty)."""
    return [mask_iou(measure(frame).mask, mask) for frame, mask in zip(frames, masks)]


def track_direction(centroids: list[tuple[float, float] | None]) -> dict:
    """Direction a centroid track moves in: net displacement (last minus first readable frame) and spread."""
    points = np.array([c for c in centroids if c is not None], dtype=np.float64)
    if len(points) < 2:
        return {"direction": None, "displacement": None, "spread": None}
    disp = points[-1] - points[0]
    spread = float(np.abs(points - points.mean(0)).max())
    if spread <= STILL_MAX_PX:
        direction = "still"
    else:
        axis = int(np.argmax(np.abs(disp)))
        direction = (("left", "right") if axis == 0 else ("up", "down"))[int(disp[axis] > 0)]
    return {"direction": direction, "displacement": [round(float(d), 3) for d in disp], "spread": round(spread, 3)}


def moves_as_named(centroids: list[tuple[float, float] | None], named: str) -> bool:
    """Whether a track agrees with the named direction (still: within `STILL_MAX_PX` throughout)."""
    track = track_direction(centroids)
    if track["direction"] is None:
        return False
    if named == "still":
        return track["spread"] <= STILL_MAX_PX
    dx, dy = world.DIRECTIONS[named]
    along = track["displacement"][0] * dx + track["displacement"][1] * dy
    across = abs(track["displacement"][0] * dy) + abs(track["displacement"][1] * dx)
    return along >= MOVE_MIN_PX and across < along


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Blur, noise and colour jitter of generator frames, so the judge reads imperfect renderings too."""
    n = len(x)
    sigma = torch.rand(n, generator=gen) * 1.2
    taps = torch.arange(-2, 3, dtype=torch.float32)
    kernel = torch.exp(-taps[None] ** 2 / (2 * sigma[:, None].clamp(min=1e-3) ** 2))
    kernel = kernel / kernel.sum(-1, keepdim=True)
    blurred = []
    for i in range(n):
        k = kernel[i]
        img = F.conv2d(F.pad(x[i:i + 1], (2, 2, 0, 0), mode="replicate"), k.view(1, 1, 1, 5).expand(3, 1, 1, 5),
                       groups=3)
        img = F.conv2d(F.pad(img, (0, 0, 2, 2), mode="replicate"), k.view(1, 1, 5, 1).expand(3, 1, 5, 1), groups=3)
        blurred.append(img)
    x = torch.cat(blurred)
    x = x * (1 + 0.15 * (torch.rand(n, 3, 1, 1, generator=gen) - 0.5)) + 0.1 * (torch.rand(n, 3, 1, 1, generator=gen) - 0.5)
    x = x + torch.randn(x.shape, generator=gen) * torch.rand(n, 1, 1, 1, generator=gen) * 0.12
    return x.clamp(-1, 1)


def _labelled_frames(n: int, seed: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    frames, labels = [], {name: [] for name in HEADS}
    for i in range(n):
        look = world.LOOKS[i % 2]
        sample = world.image_sample(rng, look=look)
        frames.append(sample.frames[0])
        for name in HEADS:
            labels[name].append(HEADS[name].index(getattr(sample.scene, name)))
    return np.stack(frames), {k: np.array(v) for k, v in labels.items()}


def train_judge(steps: int | None = None, batch: int = 128, lr: float = 2e-3, seed: int = 7,
                num_frames: int = 12000) -> tuple[Judge, dict]:
    """Train on generator frames (augmented); report accuracy on held-out generator frames."""
    steps = steps or 1200
    torch.manual_seed(seed)
    net = JudgeNet()
    frames, labels = _labelled_frames(num_frames, seed)
    x_all = torch.from_numpy(frames).float().div(127.5).sub(1).permute(0, 3, 1, 2)
    y_all = {k: torch.from_numpy(v) for k, v in labels.items()}
    opt, sched = loop.optimizer(net.parameters(), lr, steps)
    log = loop.Log("judge", steps)
    gen = torch.Generator().manual_seed(seed)
    net.train()
    for step in range(steps):
        idx = torch.randint(0, len(x_all), (batch,), generator=gen)
        out = net(_augment(x_all[idx], gen))
        loss = sum(F.cross_entropy(out[k], y_all[k][idx]) for k in HEADS)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        log(step, float(loss.detach()))
    judge = Judge(net.eval())
    test_frames, test_labels = _labelled_frames(1000, seed + 1)
    read = judge.read(test_frames)
    accuracy = {k: float(np.mean([HEADS[k].index(v) for v in read[k]] == test_labels[k])) for k in HEADS}
    return judge, {"steps": steps, "batch": batch, "seconds": log.seconds, "held_out_accuracy": accuracy,
                   "held_out_readable": float(np.mean(read["readable"])), "loss_curve": log.curve}


def read_video_file(path: Path, judge: Judge | None = None) -> dict:
    """Decode a video (mp4/gif) and read it: per-frame readings, the majority of each head, the track."""
    import imageio.v3 as iio

    frames = np.asarray(iio.imread(path, index=None))[..., :3]
    judge = judge or Judge.load(Path(__file__).resolve().parents[2] / "models" / "shapes" / "judge")
    read = judge.read(frames)
    majority = {name: max(set(read[name]), key=read[name].count) for name in HEADS}
    return {"frames": len(frames), "majority": majority, "readable": float(np.mean(read["readable"])),
            "look_two_tone": float(np.mean([v == "two-tone" for v in read["look"]])),
            "track": track_direction(read["centroid"]), "per_frame": read}


if __name__ == "__main__":  # python -m engine.shapes.judge VIDEO: what the judge reads, as JSON
    import sys

    print(json.dumps({k: v for k, v in read_video_file(Path(sys.argv[1])).items() if k != "per_frame"}))
