"""The shapes world's generator: coloured shapes on a plain background, still or moving, with their truth.

Pure numpy/PIL and seeded. Every sample carries, per frame, the object's mask and centroid plus its
shape, colour, look and motion: the ground truth that the judge and the evidence experiment read.
Objects are drawn at 4x resolution and box-filtered down, so edges are anti-aliased like a photo's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SIZE = 32
NUM_FRAMES = 8
SUPERSAMPLE = 4
BACKGROUND = (30, 30, 30)
COLOURS = {"red": (220, 45, 45), "green": (45, 185, 70), "blue": (55, 100, 235), "yellow": (235, 205, 40)}
SHAPES = ("circle", "square", "triangle")
LOOKS = ("plain", "two-tone")
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1), "still": (0, 0)}
SIZE_RANGE = (10.0, 15.0)  # object extent in pixels
SPEED_RANGE = (1.4, 2.2)  # pixels per frame for a moving object
MARGIN = 1.0
TOKEN = "sks"  # the rare token a customization binds to the new look
# The new look: the object's upper half white, its lower half its colour. Finer textures (3-px stripes were
# tried) fall below what 8x8 latents (one per 4x4 pixels) can hold: the VAE blurs them into a tint.
SECOND_COLOUR = (245, 245, 245)
# The trail variant (`trail=True`, issue #15's experiment, docs/shapes-world.md): a moving object leaves a faint
# streak behind it, as motion blur does in a photograph, so that a still shows which way the object goes. Copies
# of its silhouette at these offsets behind the centre, the strongest copy winning at each pixel: at most 0.2 of
# the colour's contrast, which keeps the streak under the judge's foreground threshold (45 of 175-205): only the
# object's anti-aliased rim behind it, partly covered pixels over the streak, can cross it.
TRAIL = ((2.0, 0.2), (4.0, 0.15), (6.0, 0.1), (8.0, 0.05))  # (px behind the centre, opacity)


@dataclass(frozen=True)
class Scene:
    """One object and how it moves; `x`, `y` are the centre at frame 0, in pixels."""

    shape: str
    colour: str
    look: str
    direction: str
    size: float
    x: float
    y: float
    speed: float

    def centre(self, frame: int) -> tuple[float, float]:
        dx, dy = DIRECTIONS[self.direction]
        return self.x + dx * self.speed * frame, self.y + dy * self.speed * frame


@dataclass
class Sample:
    """Frames (F, H, W, 3) uint8, masks (F, H, W) bool, centroids (F, 2) as (x, y), and the scene."""

    frames: np.ndarray
    masks: np.ndarray
    centroids: np.ndarray
    scene: Scene

    @property
    def caption(self) -> str:
        return video_caption(self.scene)


def image_caption(shape: str, colour: str, look: str = "plain") -> str:
    """'a red circle'; the new look is named by the rare token: 'a sks red circle'."""
    token = f"{TOKEN} " if look == "two-tone" else ""
    return f"a {token}{colour} {shape}"


def motion_phrase(direction: str) -> str:
    return "standing still" if direction == "still" else f"moving {direction}"


def video_caption(scene: Scene) -> str:
    """'a red circle moving left', 'a blue square standing still'."""
    return f"{image_caption(scene.shape, scene.colour, scene.look)} {motion_phrase(scene.direction)}"


def vocabulary() -> list[str]:
    """Every word a caption of this world can hold (the tokenizer's whole-word tokens)."""
    words = ["a", TOKEN, "moving", "standing", *COLOURS, *SHAPES, *DIRECTIONS]
    return list(dict.fromkeys(words))


def random_scene(rng: np.random.Generator, shape=None, colour=None, look="plain", direction=None,
                 num_frames: int = NUM_FRAMES) -> Scene:
    """A scene whose whole path over `num_frames` frames stays inside the image."""
    shape = shape or SHAPES[rng.integers(len(SHAPES))]
    colour = colour or list(COLOURS)[rng.integers(len(COLOURS))]
    direction = direction or "still"
    size = float(rng.uniform(*SIZE_RANGE))
    half = size / 2 + MARGIN
    speed = 0.0 if direction == "still" else float(rng.uniform(*SPEED_RANGE))
    if num_frames > 1:  # a large object at top speed would not fit its path: slow it to what the frame allows
        speed = min(speed, 0.999 * (SIZE - 2 * half) / (num_frames - 1))
    travel = speed * (num_frames - 1)
    dx, dy = DIRECTIONS[direction]
    lo_x, hi_x = half + max(0.0, -dx * travel), SIZE - half - max(0.0, dx * travel)
    lo_y, hi_y = half + max(0.0, -dy * travel), SIZE - half - max(0.0, dy * travel)
    return Scene(shape, colour, look, direction, size, float(rng.uniform(lo_x, hi_x)), float(rng.uniform(lo_y, hi_y)),
                 speed)


def _polygon(shape: str, cx: float, cy: float, size: float) -> list[tuple[float, float]] | None:
    h = size / 2
    if shape == "square":
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "triangle":  # apex up; centred on its bounding box
        return [(cx, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    return None


def _coverage(shape: str, cx: float, cy: float, size: float) -> np.ndarray:
    """The object's silhouette at `SUPERSAMPLE`x resolution, float in [0, 1]."""
    s = SUPERSAMPLE
    big = SIZE * s
    alpha = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(alpha)
    poly = _polygon(shape, cx * s, cy * s, size * s)
    if poly is None:
        r = size * s / 2
        draw.ellipse([cx * s - r, cy * s - r, cx * s + r, cy * s + r], fill=255)
    else:
        draw.polygon(poly, fill=255)
    return np.asarray(alpha, dtype=np.float32) / 255.0


def render(shape: str, colour: str, look: str, cx: float, cy: float, size: float,
           second: tuple[int, int, int] = SECOND_COLOUR, period: float | None = None,
           angle: float = 0.0, trail: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One frame (H, W, 3) uint8 and the object's mask (H, W) bool (coverage over half a pixel).

    `look="two-tone"` paints bands of half `period` (default: the size, so the upper half) in `second`,
    anchored to the object's top edge so they move with it; `angle` turns the bands (VAE textures only).
    `trail`: the unit direction of motion; a faint streak (`TRAIL`) in the object's colour is drawn behind it.
    """
    s = SUPERSAMPLE
    big = SIZE * s
    cover = _coverage(shape, cx, cy, size)
    background = np.empty((big, big, 3), dtype=np.float32)
    background[:] = BACKGROUND
    if trail is not None and trail != (0, 0):
        streak = np.zeros((big, big), dtype=np.float32)
        for offset, opacity in TRAIL:
            copy = _coverage(shape, cx - trail[0] * offset, cy - trail[1] * offset, size)
            streak = np.maximum(streak, opacity * copy)
        background += streak[..., None] * (np.array(COLOURS[colour], dtype=np.float32) - background)
    fill = np.empty((big, big, 3), dtype=np.float32)
    fill[:] = COLOURS[colour]
    if look == "two-tone":
        yy, xx = (np.mgrid[0:big, 0:big].astype(np.float32) + 0.5) / s
        theta = np.deg2rad(angle)
        along = (yy - (cy - size / 2)) * np.cos(theta) + (xx - cx) * np.sin(theta)
        band = np.floor(along / ((period or size) / 2)).astype(np.int64) % 2 == 0
        fill[band] = second
    image = cover[..., None] * fill + (1 - cover[..., None]) * background
    image = image.reshape(SIZE, s, SIZE, s, 3).mean(axis=(1, 3))
    mask = cover.reshape(SIZE, s, SIZE, s).mean(axis=(1, 3)) > 0.5
    return np.clip(image.round(), 0, 255).astype(np.uint8), mask


def render_scene(scene: Scene, num_frames: int = NUM_FRAMES, trail: bool = False) -> Sample:
    """Every frame of a scene with its masks and centroids (`trail`: the trail variant, a streak behind a moving
    object; the masks and centroids stay the object's own)."""
    frames, masks, cents = [], [], []
    for f in range(num_frames):
        cx, cy = scene.centre(f)
        frame, mask = render(scene.shape, scene.colour, scene.look, cx, cy, scene.size,
                             trail=DIRECTIONS[scene.direction] if trail else None)
        ys, xs = np.nonzero(mask)
        frames.append(frame)
        masks.append(mask)
        cents.append((xs.mean(), ys.mean()) if len(xs) else (np.nan, np.nan))
    return Sample(np.stack(frames), np.stack(masks), np.array(cents, dtype=np.float32), scene)


def image_sample(rng: np.random.Generator, look: str = "plain", trail: bool = False, **kw) -> Sample:
    """One still image (a 1-frame sample) of a random object (with `trail` and a `direction`: its streak)."""
    return render_scene(random_scene(rng, look=look, num_frames=1, **kw), num_frames=1, trail=trail)


def random_direction(rng: np.random.Generator) -> str:
    """A direction of `DIRECTIONS` ("still" included), uniformly."""
    return list(DIRECTIONS)[rng.integers(len(DIRECTIONS))]


def video_sample(rng: np.random.Generator, look: str = "plain", direction: str | None = None,
                 num_frames: int = NUM_FRAMES, trail: bool = False, **kw) -> Sample:
    """One video; the direction is drawn uniformly from `DIRECTIONS` unless given."""
    direction = direction or random_direction(rng)
    return render_scene(random_scene(rng, look=look, direction=direction, num_frames=num_frames, **kw), num_frames,
                        trail=trail)


def texture_sample(rng: np.random.Generator) -> np.ndarray:
    """A generic textured object (bands at any angle, width and second colour), for the VAE only.

    The autoencoder, like SD's, is a general image codec; it never learns which texture any word means.
    """
    scene = random_scene(rng, num_frames=1)
    second = tuple(int(v) for v in rng.integers(0, 256, 3))
    frame, _ = render(scene.shape, scene.colour, "two-tone", scene.x, scene.y, scene.size, second=second,
                      period=float(rng.uniform(8.0, 32.0)), angle=float(rng.uniform(0, 360)))
    return frame
