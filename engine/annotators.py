"""Annotators: a control's conditioning frames computed from the reference video by a model, loaded from a hub id
or a local directory (like a ControlNet: `engine.controlnets`) and cached by the worker.

``depth``: a transformers depth estimator (`AutoModelForDepthEstimation`: DPT/MiDaS such as Intel/dpt-hybrid-midas,
the MiDaS v3 model lllyasviel's depth annotator runs, or Depth Anything) with its own image processor. Its relative
inverse depth (near = bright) is min-max scaled to 0..255 as transformers' ``pipeline("depth-estimation")`` scales
one image's, but over the whole clip rather than each frame *(ours)*, so that a video's maps keep one scale and do not
flicker; grey RGB maps, as SD 1.5's depth ControlNet reads them.

``openpose``: a transformers top-down pose estimator (`VitPoseForPoseEstimation`, COCO's 17 body keypoints, such as
usyd-community/vitpose-base-simple) over one person box filling each frame *(ours: the subject of a reference video;
several people would need a person detector first)*; its keypoints are mapped to OpenPose's 18 (the neck: the
shoulders' midpoint) and drawn as OpenPose draws a body, the maps SD 1.5's openpose ControlNet was trained on
(`engine.pose_maps`).

``lineart``: controlnet_aux's LineartDetector (the informative-drawings generator, `engine.lineart_model`, vendored),
with the weights of lllyasviel/Annotators' ``sk_model.pth`` (a hub id or local directory holding that file, or
``sk_model.safetensors`` of the same state dict, preferred when present): each frame at its detect resolution (short
side 512), inverted to white lines on black, the maps the v1.1 lineart ControlNet was trained on; resized to the
video's size *(ours: controlnet_aux returns them at the detect resolution; identical at 512x512)*.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

from engine import lineart_model, pose_maps
from engine.errors import ModelLoadError, SpecError
from engine.models import BaseModels

DEPTH_BATCH = 8  # frames per depth-estimator call: bounds its activations on a 32-frame video
POSE_BATCH = 8  # frames per pose-estimator call
LINEART_BATCH = 8  # frames per lineart Generator call (at 512x512 one 64-channel activation is 64 MB a frame)
POSE_THRESHOLD = 0.3  # a keypoint scored below this is not drawn (ours; VitPose's examples use 0.3)
COCO_KEYPOINTS = 17


@dataclass
class DepthEstimator:
    """A loaded transformers depth estimator and its image processor, on the base's device (float32)."""

    model: Any  # transformers' `*ForDepthEstimation`
    processor: Any  # its `AutoImageProcessor`

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """(F, H, W, 3) uint8 frames -> (F, H, W, 3) uint8 grey depth maps, scaled over the clip (module docstring)."""
        height, width = frames.shape[1:3]
        depths = []
        for start in range(0, len(frames), DEPTH_BATCH):
            images = [Image.fromarray(frame) for frame in frames[start:start + DEPTH_BATCH]]
            inputs = self.processor(images=images, return_tensors="pt").to(self.model.device)
            with torch.inference_mode():
                outputs = self.model(**inputs)
            sized = self.processor.post_process_depth_estimation(outputs, target_sizes=[(height, width)] * len(images))
            depths += [item["predicted_depth"].float().cpu() for item in sized]
        depth = torch.stack(depths)
        low, high = depth.min(), depth.max()
        scaled = (depth - low) / (high - low) if high > low else torch.zeros_like(depth)
        grey = (scaled * 255).round().to(torch.uint8).numpy()
        return np.repeat(grey[..., None], 3, axis=-1)


def _from_pretrained(base: BaseModels, source: str, model_class, kind: str) -> tuple[Any, Any]:
    """(model on the base's device in float32, frozen; its image processor) of a transformers annotator."""
    from transformers import AutoImageProcessor

    spec = base.spec
    where = dict(cache_dir=spec.cache_dir, local_files_only=spec.local_files_only)
    try:
        processor = AutoImageProcessor.from_pretrained(source, **where)
        model = model_class.from_pretrained(source, **where)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"could not load the {kind} annotator {source!r}: {exc}") from exc
    return model.to(base.device, torch.float32).eval().requires_grad_(False), processor


def load_depth_estimator(base: BaseModels, source: str) -> DepthEstimator:
    from transformers import AutoModelForDepthEstimation

    return DepthEstimator(*_from_pretrained(base, source, AutoModelForDepthEstimation, "depth"))


@dataclass
class PoseEstimator:
    """A loaded transformers VitPose model and its image processor, on the base's device (float32)."""

    model: Any  # `VitPoseForPoseEstimation`
    processor: Any  # its `AutoImageProcessor`

    def keypoints(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(F, H, W, 3) uint8 -> COCO keypoints (F, 17, 2) as (x, y) pixels and their scores (F, 17)."""
        height, width = frames.shape[1:3]
        experts = getattr(self.model.config.backbone_config, "num_experts", 1) > 1  # ViTPose+: its COCO expert (0)
        points, scores = [], []
        for start in range(0, len(frames), POSE_BATCH):
            images = [Image.fromarray(frame) for frame in frames[start:start + POSE_BATCH]]
            boxes = [[[0.0, 0.0, float(width), float(height)]] for _ in images]  # COCO (x, y, w, h): the frame
            inputs = self.processor(images=images, boxes=boxes, return_tensors="pt").to(self.model.device)
            extra = {"dataset_index": torch.zeros(len(images), dtype=torch.long, device=self.model.device)} \
                if experts else {}
            with torch.inference_mode():
                outputs = self.model(**inputs, **extra)
            for (person,) in self.processor.post_process_pose_estimation(outputs, boxes=boxes):
                points.append(person["keypoints"].float().cpu().numpy())
                scores.append(person["scores"].float().cpu().numpy())
        return np.stack(points), np.stack(scores)

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """(F, H, W, 3) uint8 frames -> (F, H, W, 3) uint8 OpenPose body maps (module docstring)."""
        height, width = frames.shape[1:3]
        points, scores = self.keypoints(frames)
        return np.stack([pose_maps.draw_body(pose_maps.openpose_from_coco(p, s, POSE_THRESHOLD), height, width)
                         for p, s in zip(points, scores)])


def load_pose_estimator(base: BaseModels, source: str) -> PoseEstimator:
    from transformers import VitPoseForPoseEstimation

    model, processor = _from_pretrained(base, source, VitPoseForPoseEstimation, "openpose")
    if model.config.num_labels != COCO_KEYPOINTS:
        raise ModelLoadError(f"the openpose annotator {source!r} predicts {model.config.num_labels} keypoints; "
                             f"expected COCO's {COCO_KEYPOINTS} body keypoints")
    return PoseEstimator(model, processor)


@dataclass
class LineartDetector:
    """A loaded lineart Generator on the base's device (float32) and its detect resolution (short side)."""

    model: lineart_model.Generator
    resolution: int = lineart_model.DETECT_RESOLUTION

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """(F, H, W, 3) uint8 frames -> (F, H, W, 3) uint8 lineart maps, white on black (module docstring)."""
        return lineart_model.detect(self.model, frames, self.resolution, LINEART_BATCH)


LINEART_FILES = ("sk_model.safetensors", "sk_model.pth")  # preferred first; the .pth is lllyasviel/Annotators'


def lineart_weights(base: BaseModels, source: str) -> str:
    """The path of `source`'s lineart weights: a local directory's file, else the hub repo's (downloaded)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    if Path(source).is_dir():
        for name in LINEART_FILES:
            if (Path(source) / name).is_file():
                return str(Path(source) / name)
        raise ModelLoadError(f"the lineart annotator {source!r} holds none of {', '.join(LINEART_FILES)}")
    spec = base.spec
    for name in LINEART_FILES:
        try:
            return hf_hub_download(source, name, cache_dir=spec.cache_dir, local_files_only=spec.local_files_only)
        except (EntryNotFoundError, LocalEntryNotFoundError):
            continue
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"could not load the lineart annotator {source!r}: {exc}") from exc
    raise ModelLoadError(f"the lineart annotator {source!r}: none of {', '.join(LINEART_FILES)} was found on the "
                         "hub or, offline or unreachable, in its cache")


def load_lineart_detector(base: BaseModels, source: str) -> LineartDetector:
    path = lineart_weights(base, source)
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(path)
        else:  # a state dict: weights_only refuses any other pickled object
            state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict):
            raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict")
        model = lineart_model.load_generator(state, path)
    except (OSError, ValueError, RuntimeError, pickle.UnpicklingError) as exc:
        raise ModelLoadError(f"could not load the lineart annotator {source!r}: {exc}") from exc
    return LineartDetector(model.to(base.device, torch.float32))


LOADERS: dict[str, Callable[[BaseModels, str], Callable[[np.ndarray], np.ndarray]]] = {
    "depth": load_depth_estimator,
    "openpose": load_pose_estimator,
    "lineart": load_lineart_detector,
}


def load_annotator(base: BaseModels, control_type: str, source: str) -> Callable[[np.ndarray], np.ndarray]:
    """The annotator of `control_type` with the weights at `source` (hub id or local directory), on the base's
    device: a callable from (F, H, W, 3) uint8 reference frames to (F, H, W, 3) uint8 conditioning frames."""
    if control_type not in LOADERS:
        raise SpecError(f"control.type={control_type!r} has no annotator (served: {', '.join(LOADERS)})",
                        field="control.type")
    return LOADERS[control_type](base, source)
