"""Annotators: a control's conditioning frames computed from the reference video by a model, loaded from a hub id
or a local directory (like a ControlNet: `engine.controlnets`) and cached by the worker.

``depth``: a transformers depth estimator (`AutoModelForDepthEstimation`: DPT/MiDaS such as Intel/dpt-hybrid-midas,
the MiDaS v3 model lllyasviel's depth annotator runs, or Depth Anything) with its own image processor. Its relative
inverse depth (near = bright) is min-max scaled to 0..255 as transformers' ``pipeline("depth-estimation")`` scales
one image's, but over the whole clip rather than each frame *(ours)*, so that a video's maps keep one scale and do not
flicker; grey RGB maps, as SD 1.5's depth ControlNet reads them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

from engine.errors import ModelLoadError, SpecError
from engine.models import BaseModels

DEPTH_BATCH = 8  # frames per depth-estimator call: bounds its activations on a 32-frame video


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


def load_depth_estimator(base: BaseModels, source: str) -> DepthEstimator:
    from transformers import AutoImageProcessor, AutoModelForDepthEstimation

    spec = base.spec
    where = dict(cache_dir=spec.cache_dir, local_files_only=spec.local_files_only)
    try:
        processor = AutoImageProcessor.from_pretrained(source, **where)
        model = AutoModelForDepthEstimation.from_pretrained(source, **where)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"could not load the depth annotator {source!r}: {exc}") from exc
    return DepthEstimator(model.to(base.device, torch.float32).eval().requires_grad_(False), processor)


LOADERS: dict[str, Callable[[BaseModels, str], Callable[[np.ndarray], np.ndarray]]] = {
    "depth": load_depth_estimator,
}


def load_annotator(base: BaseModels, control_type: str, source: str) -> Callable[[np.ndarray], np.ndarray]:
    """The annotator of `control_type` with the weights at `source` (hub id or local directory), on the base's
    device: a callable from (F, H, W, 3) uint8 reference frames to (F, H, W, 3) uint8 conditioning frames."""
    if control_type not in LOADERS:
        raise SpecError(f"control.type={control_type!r} has no annotator (served: {', '.join(LOADERS)})",
                        field="control.type")
    return LOADERS[control_type](base, source)
