"""OpenPose body maps: 18 keypoints drawn as OpenPose (and controlnet_aux, whose maps SD 1.5's openpose ControlNet
was trained on) draws them: each limb a filled ellipse in its colour at 60%, each keypoint a disc in its colour,
on black. Keypoints come from a COCO 17-keypoint estimator (`engine.annotators`)."""

from __future__ import annotations

import math

import cv2
import numpy as np

# OpenPose's body order (nose, neck, right shoulder, elbow, wrist, left shoulder, elbow, wrist, right hip, knee,
# ankle, left hip, knee, ankle, right eye, left eye, right ear, left ear) as COCO indices; the neck (None) is the
# shoulders' midpoint.
COCO_OF_OPENPOSE = (0, None, 6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, 2, 1, 4, 3)
LIMBS = ((1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11), (11, 12), (12, 13),
         (1, 0), (0, 14), (14, 16), (0, 15), (15, 17))
COLORS = ((255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0), (0, 255, 0),
          (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255),
          (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85))  # RGB, one per limb and per keypoint
LIMB_SHADE = 0.6
STICK_WIDTH, DISC_RADIUS, AT_SIZE = 4, 4, 512  # OpenPose's, on 512-pixel maps: scaled with the map's size


def openpose_from_coco(points: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """COCO keypoints (17, 2) (x, y) and scores (17,) -> OpenPose's 18 (18, 2), NaN where scored below
    `threshold` (the neck: where both shoulders are)."""
    kept = np.where((scores >= threshold)[:, None], points, np.nan)
    neck = (kept[5] + kept[6]) / 2
    return np.stack([neck if i is None else kept[i] for i in COCO_OF_OPENPOSE])


def draw_body(keypoints: np.ndarray, height: int, width: int) -> np.ndarray:
    """OpenPose's 18 keypoints (18, 2) as (x, y) pixels, NaN = missing -> (height, width, 3) uint8 RGB map."""
    canvas = np.zeros((height, width, 3), np.uint8)
    scale = min(height, width) / AT_SIZE
    stick, radius = max(1, round(STICK_WIDTH * scale)), max(1, round(DISC_RADIUS * scale))
    for (a, b), color in zip(LIMBS, COLORS):
        (x0, y0), (x1, y1) = keypoints[a], keypoints[b]
        if np.isnan([x0, y0, x1, y1]).any():
            continue
        length = math.hypot(x1 - x0, y1 - y0)
        angle = math.degrees(math.atan2(y0 - y1, x0 - x1))
        polygon = cv2.ellipse2Poly((int((x0 + x1) / 2), int((y0 + y1) / 2)), (int(length / 2), stick), int(angle),
                                   0, 360, 1)
        cv2.fillConvexPoly(canvas, polygon, [int(c * LIMB_SHADE) for c in color])
    for (x, y), color in zip(keypoints, COLORS):
        if not np.isnan([x, y]).any():
            cv2.circle(canvas, (int(x), int(y)), radius, color, thickness=-1)
    return canvas
