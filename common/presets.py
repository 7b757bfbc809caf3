"""What each model preset serves: default sizes, the frame positions of its motion modules, the sizes a
customization may train at, and the cost limits a job must fit (API and worker read them here; torch-free).

Costs are counted in pixel-frames (frames x height x width) and pixel-frame steps (x denoising steps):
memory grows with the first, time with the second. A limit is written as the largest job it admits.
A video longer than its context window samples with FreeNoise (`common.long_video`), the UNet called one
window at a time: its memory limit applies to one window (context_length x height x width), its time limit to
the whole video (its frames, not the ~4/3 UNet passes per frame of the default windows' overlap), and its length
to `max_video_frames`. What grows with the length beyond a window is the latents and the decoded frames
(bench/README.md, "Long videos", measures it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from common.errors import InvalidArgument
from common.long_video import LongVideoError, check_prompt_frames, context_window
from common.video_to_video import init_problem

TRAIN_STEP_PASSES = 3  # a training step (forward + backward) costs about three sampling forwards
# A ControlNet is a copy of the UNet's encoder and middle block: about half a UNet forward more per step.
CONTROLNET_COST = (3, 2)  # work x 3 / 2
# The ControlNet each preset serves per name when the settings name none: SD 1.5 ControlNet v1.1 for sd15;
# shapes: its own, trained on the world's (canny edges -> still) pairs and committed (engine/shapes/train_controlnet.py);
# "builtin" = `ControlNetModel.from_unet` of the base UNet, built in the worker (tiny: seeded non-zero zero-convs so
# tests see the control act; elsewhere untrained, its zero-convs make it a no-op).
SHAPES_CONTROLNET_CANNY = Path(__file__).resolve().parents[1] / "models" / "shapes" / "controlnet-canny"
CONTROLNETS: dict[str, dict[str, str]] = {
    "sd15": {"canny": "lllyasviel/control_v11p_sd15_canny", "depth": "lllyasviel/control_v11f1p_sd15_depth",
             "openpose": "lllyasviel/control_v11p_sd15_openpose", "lineart": "lllyasviel/control_v11p_sd15_lineart"},
    "shapes": {"canny": str(SHAPES_CONTROLNET_CANNY)},
    "tiny": {"canny": "builtin"},
}
# Control types whose conditioning the worker computes with annotator weights (engine/annotators.py), served where
# the settings configure them (`Settings.annotators`); canny needs none, precomputed none at all.
WEIGHTED_ANNOTATOR_TYPES = ("depth", "openpose", "lineart")
# The annotator weights each preset serves per control type when the settings name none (a type without one is
# refused: 422 naming control.type). sd15: MiDaS v3 DPT-hybrid, the depth estimator lllyasviel's depth annotator
# runs (in its transformers form), ViTPose-B (COCO body keypoints, drawn as OpenPose's), and lllyasviel/Annotators'
# sk_model.pth (controlnet_aux's LineartDetector, vendored: engine/lineart_model.py); shapes and tiny: none (their
# worlds have no depth or people, and no lineart ControlNet).
ANNOTATORS: dict[str, dict[str, str]] = {
    "sd15": {"depth": "Intel/dpt-hybrid-midas", "openpose": "usyd-community/vitpose-base-simple",
             "lineart": "lllyasviel/Annotators"},
    "shapes": {},
    "tiny": {},
}
# The AnimateDiff motion LoRAs each preset serves when the settings name none (a request's `motion_lora` is one of
# these strings): sd15, AnimateDiff's camera motions for motion adapter v1-5-2; shapes, its own (every object moving
# right, engine/shapes/train_motion_lora.py); tiny, none (its random motion modules fit no file).
SD15_MOTION_LORAS = tuple(f"guoyww/animatediff-motion-lora-{m}" for m in (
    "zoom-in", "zoom-out", "pan-left", "pan-right", "tilt-up", "tilt-down", "rolling-clockwise",
    "rolling-anticlockwise"))
SHAPES_MOTION_LORA_RIGHT = Path(__file__).resolve().parents[1] / "models" / "shapes" / "motion-lora-right"
MOTION_LORAS: dict[str, tuple[str, ...]] = {
    "sd15": SD15_MOTION_LORAS,
    "shapes": (str(SHAPES_MOTION_LORA_RIGHT),),
    "tiny": (),
}


def video_work(frames: int, height: int, width: int, steps: int) -> int:
    """Pixel-frame steps of sampling one video."""
    return frames * height * width * steps


def train_work(images: int, image_steps: int, steps: int, frames: int, height: int, width: int,
               batch: int = 1, prior_images: int = 0) -> int:
    """Pixel-frame steps of one customization: its stills (and prior stills), then its training steps
    (a prior batch doubles each step)."""
    stills = (images + prior_images) * image_steps * height * width
    batches = 2 if prior_images else 1
    return stills + TRAIN_STEP_PASSES * steps * batch * batches * frames * height * width


@dataclass(frozen=True)
class Preset:
    """One preset's serving facts. `train_sizes` None admits any size (tiny: its Motion Adapter costs seconds)."""

    height: int
    width: int
    num_frames: int
    image_steps: int
    sample_steps: int
    guidance_scale: float  # classifier-free guidance of stills and videos (SD 1.5's 7.5; shapes: see docs/shapes-world.md)
    max_frames: int  # the motion adapter's `motion_max_seq_length` (tests check it against the weights)
    max_video_pixels: int
    max_video_work: int
    max_train_pixels: int  # num_frames x height x width of the training videos: bounds training memory
    max_train_work: int
    train_sizes: tuple[tuple[int, int, int], ...] | None  # (height, width, num_frames)
    max_video_frames: int = 256  # the longest video (FreeNoise past max_frames)

    def fill(self, **asked: float | None) -> dict:
        """The asked sizes and step counts with each None (everywhere: "the preset's default") replaced by this
        preset's value: the one place requests and specs get their defaults."""
        return {name: getattr(self, _DEFAULT_OF[name]) if value is None else value for name, value in asked.items()}


_DEFAULT_OF = {"num_frames": "num_frames", "height": "height", "width": "width", "steps": "sample_steps",
               "image_steps": "image_steps", "guidance_scale": "guidance_scale",
               "image_guidance_scale": "guidance_scale"}


_CPU_VIDEO = dict(max_video_pixels=32 * 64 * 64, max_video_work=video_work(32, 64, 64, 50),
                  max_train_pixels=16 * 64 * 64,
                  max_train_work=train_work(images=200, image_steps=50, steps=2000, frames=16, height=64, width=64))

PRESETS: dict[str, Preset] = {
    # CPU-sized: the largest video (32 frames at 64x64, 50 steps) is 32 times the default one (8 at 32x32, 25).
    "tiny": Preset(height=32, width=32, num_frames=8, image_steps=4, sample_steps=4, guidance_scale=7.5, max_frames=32,
                   train_sizes=None, **_CPU_VIDEO),
    # shapes samples at guidance 3: its DreamBooth checkpoints break into blobs at 7.5 (docs/shapes-world.md).
    "shapes": Preset(height=32, width=32, num_frames=8, image_steps=25, sample_steps=25, guidance_scale=3.0,
                     max_frames=32,
                     train_sizes=((32, 32, 8),), **_CPU_VIDEO),
    # 24 GB GPU: sampling 32x512x512 in fp16 and training 16x512x512 with gradient checkpointing fit
    # (bench/README.md, 7b); 100 steps of the largest video stay inside the generation time limit.
    "sd15": Preset(height=512, width=512, num_frames=16, image_steps=25, sample_steps=25, guidance_scale=7.5,
                   max_frames=32,
                   train_sizes=((512, 512, 16),), max_video_pixels=32 * 512 * 512,
                   max_video_work=video_work(32, 512, 512, 100), max_train_pixels=16 * 512 * 512,
                   max_train_work=train_work(images=200, image_steps=50, steps=2000, frames=16, height=512, width=512)),
}


def _largest(asked: dict[str, int], defaults: dict[str, int]) -> str:
    """The field furthest above its default: the one to name when a product of them is over a limit."""
    return max(asked, key=lambda name: asked[name] / defaults[name])


def _check_frames(preset: Preset, num_frames: int, prefix: str = "") -> None:
    if num_frames > preset.max_frames:
        raise InvalidArgument(f"{prefix}num_frames={num_frames} is more than the {preset.max_frames} frame positions "
                              "of this preset's motion modules", field=prefix + "num_frames")


def _check_pixels(preset: Preset, size: dict[str, int], limit: int, what: str, prefix: str = "") -> None:
    """frames x height x width of `size` within `limit` (memory), else 422 naming the largest of them; the frames
    are `num_frames`, or `context_length` for a video sampled in windows."""
    frames = "num_frames" if "num_frames" in size else "context_length"
    pixels = size[frames] * size["height"] * size["width"]
    if pixels > limit:
        default = preset.num_frames if frames == "num_frames" else preset.max_frames
        field = _largest(size, {"height": preset.height, "width": preset.width, frames: default})
        raise InvalidArgument(f"{prefix}{frames} x height x width = {pixels} pixel-frames is over this deployment's "
                              f"{what} of {limit}", field=prefix + field)


def check_video(preset: Preset, num_frames: int | None, height: int | None, width: int | None,
                steps: int | None, controlnet: bool = False, init_strength: float | None = None,
                context_length: int | None = None, context_stride: int | None = None,
                prompt: str | dict[int, str] = "", scheduler: str = "ddim") -> None:
    """Refuse a video longer than `max_video_frames` or with a bad FreeNoise window or prompt map, over the
    memory limit (one window's pixel-frames) or the time limit (the whole video's work; a ControlNet costs
    `CONTROLNET_COST` times the work), or, video-to-video, whose strength leaves the init video as it is
    (`common.video_to_video`)."""
    defaults = preset.fill(num_frames=None, height=None, width=None, steps=None)
    asked = preset.fill(num_frames=num_frames, height=height, width=width, steps=steps)
    if asked["num_frames"] > preset.max_video_frames:
        raise InvalidArgument(f"num_frames={asked['num_frames']} is more than this deployment's longest video, "
                              f"{preset.max_video_frames} frames", field="num_frames")
    try:
        if isinstance(prompt, dict):
            check_prompt_frames(prompt, asked["num_frames"])
        window = context_window(preset.max_frames, asked["num_frames"], context_length, context_stride,
                                isinstance(prompt, dict))
    except LongVideoError as exc:
        raise InvalidArgument(exc.message, field=exc.field) from None
    frames = "num_frames" if window is None else "context_length"  # what holds the frames in memory at once
    _check_pixels(preset, {frames: asked["num_frames"] if window is None else window[0], "height": asked["height"],
                           "width": asked["width"]}, preset.max_video_pixels, "limit")
    problem = None if init_strength is None else init_problem(asked["steps"], init_strength, scheduler)
    if problem is not None:
        raise InvalidArgument(problem, field="init.strength")
    work = video_work(asked["num_frames"], asked["height"], asked["width"], asked["steps"])
    with_control = ""
    if controlnet:
        work, with_control = work * CONTROLNET_COST[0] // CONTROLNET_COST[1], " (x 1.5 with a ControlNet)"
    if work > preset.max_video_work:
        raise InvalidArgument(f"num_frames x height x width x steps{with_control} = {work} is over this deployment's "
                              f"limit of {preset.max_video_work}", field=_largest(asked, defaults))


def check_customization(preset: Preset, config: dict, prefix: str = "config.") -> None:
    """Refuse a customization at a size the preset does not train at, or over its training cost limit."""
    size = preset.fill(height=config.get("height"), width=config.get("width"), num_frames=config.get("num_frames"))
    _check_frames(preset, size["num_frames"], prefix)
    if preset.train_sizes is not None and tuple(size.values()) not in preset.train_sizes:
        allowed = ", ".join(f"{h}x{w}x{f}" for h, w, f in preset.train_sizes)
        wrong = next((k for k in size if size[k] not in {dict(zip(size, s))[k] for s in preset.train_sizes}), "height")
        raise InvalidArgument(f"{prefix}{wrong}={size[wrong]}: this preset trains at (height x width x num_frames) "
                              f"{allowed} only (each new size would train its own shared Motion Adapter)",
                              field=prefix + wrong)
    _check_pixels(preset, size, preset.max_train_pixels, "training limit", prefix)
    prior = config.get("prior_num_images", 0) if config.get("prior_preservation_weight") else 0
    work = train_work(images=config["num_images"], image_steps=preset.image_steps, steps=config["train_steps"],
                      frames=size["num_frames"], height=size["height"], width=size["width"], prior_images=prior)
    if work > preset.max_train_work:
        asked = {"train_steps": config["train_steps"], "num_images": config["num_images"], **size}
        from common.schemas import CustomizationConfig  # here: the engine reads this module without pydantic

        fields = CustomizationConfig.model_fields
        defaults = {"train_steps": fields["train_steps"].default, "num_images": fields["num_images"].default,
                    "height": preset.height, "width": preset.width, "num_frames": preset.num_frames}
        field = _largest(asked, defaults)
        raise InvalidArgument(f"{prefix.rstrip('.')} costs {work} pixel-frame steps (stills and training), over this "
                              f"deployment's limit of {preset.max_train_work}", field=prefix + field)
