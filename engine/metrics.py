"""Video metrics for side-by-side evaluation; model-free, so they run on tiny models too.

All take uint8 or [0, 1] float videos shaped (F, H, W, 3).

* motion: mean absolute change between consecutive frames, in [0, 1] (0 = static video).
* temporal consistency: mean cosine similarity of consecutive (mean-centred) frames, in [-1, 1].
* fidelity (model-free proxy of CLIP-I): for each frame, the best similarity to any reference image,
  where similarity = 1 - mean |a - b| of the two images resized to 32x32; averaged over frames;
  1 means every frame is one of the references.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

PROXY_SIZE = 32


def as_float(video) -> np.ndarray:
    """Any (F, H, W, 3) video as float32 in [0, 1]."""
    arr = np.asarray(video)
    return arr.astype(np.float32) / 255.0 if arr.dtype == np.uint8 else arr.astype(np.float32)


def motion(video) -> float:
    """Mean absolute frame-to-frame change (0 for a frozen video)."""
    v = as_float(video)
    if len(v) < 2:
        return 0.0
    return float(np.abs(np.diff(v, axis=0)).mean())


def temporal_consistency(video) -> float:
    """Mean cosine similarity between consecutive mean-centred frames (1 for a frozen video)."""
    v = as_float(video).reshape(len(video), -1)
    v = v - v.mean(axis=1, keepdims=True)
    sims = []
    for a, b in zip(v[:-1], v[1:]):
        na, nb = np.linalg.norm(a), np.linalg.norm(b)
        sims.append(1.0 if na == 0 and nb == 0 else float(a @ b / max(na * nb, 1e-12)))
    return float(np.mean(sims)) if sims else 1.0


def _small(image) -> np.ndarray:
    img = Image.fromarray((as_float(image[None])[0] * 255).round().astype(np.uint8))
    return np.asarray(img.resize((PROXY_SIZE, PROXY_SIZE), Image.BILINEAR), dtype=np.float32) / 255.0


def fidelity_proxy(video, references) -> float:
    """Mean over frames of the best 1 - mean-abs-difference to a reference image (at 32x32)."""
    refs = [_small(np.asarray(r)) for r in references]
    scores = [max(1.0 - float(np.abs(_small(frame) - ref).mean()) for ref in refs) for frame in as_float(video)]
    return float(np.mean(scores))
