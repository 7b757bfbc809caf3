"""Plain, typed descriptions of what the engine is asked to do.

The engine never reads the environment: the worker (or the CLI) builds these from its settings
and request payloads and passes them in. Defaults marked *(ours)* follow `method.md`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Literal

Method = Literal["still-moving", "naive", "base"]
Preset = Literal["tiny", "shapes", "sd15"]
Precision = Literal["auto", "float32", "float16", "bfloat16"]
SchedulerName = Literal["ddim", "euler", "dpm++"]  # `engine.models.SCHEDULERS`

SD15_BASE = "stable-diffusion-v1-5/stable-diffusion-v1-5"
SD15_MOTION_ADAPTER = "guoyww/animatediff-motion-adapter-v1-5-2"

GENERIC_MOTION_PROMPTS = (
    "a photo of a person",
    "a photo of a dog",
    "a landscape with mountains",
    "a city street",
    "a bowl of fruit on a table",
    "a painting of a house",
    "a car on a road",
    "a close-up of a flower",
)


@dataclass(frozen=True)
class ModelSpec:
    """Which base T2I + motion adapter to load, and where/how to run it.

    Args:
        preset: "shapes" (the committed world trained here, loaded like real weights), "tiny" (random
            weights built in code, for fast tests) or "sd15" (real weights).
        base_model: hub id or local directory of an SD 1.5 diffusers pipeline; None = the preset's own.
        motion_adapter: hub id or local directory of an AnimateDiff motion adapter; None = the preset's own.
        device: "auto" picks CUDA when present, else CPU.
        precision: "auto" is fp16 on CUDA and fp32 on CPU.
        cache_dir: Hugging Face cache directory for downloads.
        local_files_only: never touch the network (offline machines).
        enable_vae_slicing: decode a video's frames one at a time (peak memory of one frame, same output).
        gradient_checkpointing: recompute UNet activations in backward (training within 24 GB at 512x512x16).
        compile_unet: sample with `torch.compile`d UNets (off by default: the first video of each loaded
            model pays the compile time; whether later ones gain is measured by `bench.real_size --compile`).
    """

    preset: Preset = "shapes"
    base_model: str | None = None
    motion_adapter: str | None = None
    device: str = "auto"
    precision: Precision = "auto"
    cache_dir: str | None = None
    local_files_only: bool = False
    enable_vae_slicing: bool = True
    gradient_checkpointing: bool = False
    compile_unet: bool = False

    def sources(self) -> tuple[str, str]:
        """(base model, motion adapter) to load: the spec's, else the preset's own (not for `tiny`)."""
        own = preset_sources(self.preset)
        return self.base_model or own[0], self.motion_adapter or own[1]

    def identity(self) -> dict:
        """What defines the weights (not where they run): used in manifests and cache keys."""
        if self.preset == "tiny":
            return {"preset": "tiny"}
        if self.preset == "shapes" and self.base_model is None and self.motion_adapter is None:
            from engine.shapes.paths import revision

            return {"preset": "shapes", "revision": revision()}
        base, motion = self.sources()
        return {"preset": self.preset, "base_model": base, "motion_adapter": motion}


def preset_sources(preset: str) -> tuple[str, str]:
    """The hub ids or committed directories a preset loads by default."""
    if preset == "shapes":
        from engine.shapes.paths import BASE_DIR, MOTION_DIR

        return str(BASE_DIR), str(MOTION_DIR)
    return SD15_BASE, SD15_MOTION_ADAPTER


@dataclass(frozen=True)
class MotionAdapterSpec:
    """Training settings of the Motion Adapter (a LoRA on the motion modules). All *(ours)*."""

    rank: int = 16
    # 1e-4 left scale 1 moving on the shapes world (1.07 vs 1.63 px/frame at 0), 1e-3 froze it (0.19) at the same
    # cost (docs/motion-adapter-budget.json, docs/evidence.md "Motion Adapter budget")
    learning_rate: float = 1e-3
    train_steps: int = 300
    num_images: int = 16
    batch_size: int = 1  # frozen videos per training step
    prompts: tuple[str, ...] = ()  # generic prompts of the base's world; () = the preset's (`PresetDefaults`)
    seed: int = 1234

    def cache_key(self, model: ModelSpec, stills: dict) -> str:
        """Stable key of (base model, adapter settings, how its training stills are made): customizations on one
        base share it. `stills`: the resolved size, prompts, image steps and guidance (`motion_adapter.stills_inputs`)."""
        payload = {"model": model.identity(), "adapter": asdict(self) | {"prompts": None}, "stills": stills}
        digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
        return digest[:24]


@dataclass(frozen=True)
class TrainSpec:
    """A Still-Moving customization: frozen videos from the customized T2I, then Spatial Adapters.

    `height`, `width`, `num_frames`, `image_steps` of None mean "the preset's default" (as in the API).
    """

    prompts: tuple[str, ...]
    num_images: int = 40
    train_steps: int = 500
    rank: int = 16
    learning_rate: float = 1e-4
    seed: int = 0
    batch_size: int = 1
    # stills per T2I pipeline call (the Motion Adapter's stills too): 4 was 1.7x faster per still than 1 at both
    # architectures on CPU (bench/README.md, "Batching"); the same worker setting, STILLMOVING_IMAGE_BATCH_SIZE
    image_batch_size: int = 4
    train_resnets: bool = False
    train_projections: bool = False
    train_feedforward: bool = False
    use_motion_adapter: bool = True
    # "customized": trained for this customization on its frozen videos over the customized spatial layers, kept in
    # its artifact; "shared": trained once per base on its own stills and cached (ours). Customized is the default:
    # fewer unreadable frames and better shapes than shared on every customization measured (docs/evidence.md).
    motion_adapter_source: Literal["shared", "customized"] = "customized"
    check_motion_adapter: bool = True
    # Prior preservation (ours, DreamBooth's form): frozen videos of base-T2I stills of the preset's generic
    # prompts trained alongside the customized ones, loss weight `prior_preservation_weight` (0 = off).
    prior_preservation_weight: float = 0.0
    prior_num_images: int = 16  # sample once at Motion Adapter scale 1 and 0; record the motion of each
    num_frames: int | None = None
    height: int | None = None
    width: int | None = None
    image_steps: int | None = None
    image_guidance_scale: float | None = None  # None: the preset's
    negative_prompt: str = ""
    checkpoint_every: int = 50
    preview: bool = True
    exports: bool = True  # the Spatial Adapter's diffusers, kohya and ComfyUI exports (`exports.py`)
    motion: MotionAdapterSpec = field(default_factory=MotionAdapterSpec)


@dataclass(frozen=True)
class ControlSpec:
    """A ControlNet driven by a reference video (`conditioning.py`: resampled to the video's frames and size).

    Args:
        video: path of the reference (any container ffmpeg reads: MP4, WebM, GIF, PNG, JPEG).
        type: "canny" (edges of the reference, OpenCV Canny with the two thresholds), "depth" or "openpose" (an
            annotator's maps of the reference: `engine.annotators`) or "precomputed" (the reference already holds the
            conditioning frames).
        source_frames: frames of the reference when known (then only the frames used are kept while decoding).
        scale: ``controlnet_conditioning_scale``; 0 = no effect.
        start, end: fractions of the denoising steps the control acts within.
    """

    video: str
    type: Literal["canny", "depth", "openpose", "precomputed"] = "canny"
    source_frames: int | None = None
    scale: float = 1.0
    start: float = 0.0
    end: float = 1.0
    low_threshold: int = 100
    high_threshold: int = 200


@dataclass(frozen=True)
class InitSpec:
    """Video-to-video: start from `video` (resampled like a control's), noised to `strength` (1 = replaced)."""

    video: str
    source_frames: int | None = None
    strength: float = 0.8


@dataclass(frozen=True)
class SampleSpec:
    """One video to sample. Size/frames/steps of None mean "the preset's default" (as in the API). With
    `control` the sampler needs a ControlNet (`engine.load_controlnet`); with `init` it is video-to-video; with
    `motion_lora` it reads that LoRA (`engine.read_motion_lora`) unless the caller passes it loaded.

    A video longer than `context_length` frames (None: the motion modules' frame positions), or a `prompt` given
    as a ``{frame: prompt}`` map (prompt travel), samples with FreeNoise (`engine.free_noise`) in windows of
    `context_length` frames `context_stride` apart (None: windows overlapping by a quarter)."""

    prompt: str | dict[int, str]
    negative_prompt: str = ""
    num_frames: int | None = None
    height: int | None = None
    width: int | None = None
    steps: int | None = None
    guidance_scale: float | None = None  # None: the preset's
    seed: int = 0
    fps: int = 8
    format: Literal["mp4", "gif"] = "mp4"
    spatial_adapter_scale: float = 1.0
    motion_adapter_scale: float = 0.0  # 0 = removed (Still-Moving's test time), 1 = static, < 0 = more motion
    method: Method = "still-moving"
    scheduler: SchedulerName = "ddim"
    control: ControlSpec | None = None
    init: InitSpec | None = None
    context_length: int | None = None
    context_stride: int | None = None
    # an AnimateDiff motion LoRA (hub id or local directory; `engine.motion_loras`) on the motion modules, at scale
    motion_lora: str | None = None
    motion_lora_scale: float = 1.0
