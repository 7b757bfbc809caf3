"""Loading the base models: the T2I components, the AnimateDiff motion adapter, device and dtype."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    MotionAdapter,
    UNet2DConditionModel,
    UNetMotionModel,
)
from transformers import CLIPTextModel, CLIPTokenizer

from common.presets import PRESETS, Preset
from engine import tiny_models
from engine.errors import ModelLoadError, SpecError
from engine.specs import GENERIC_MOTION_PROMPTS, ModelSpec


@dataclass(frozen=True)
class PresetDefaults(Preset):
    """A preset's serving facts (`common.presets`: default sizes and steps, filled in by `fill`) and the generic
    prompts whose base-T2I stills train the shared Motion Adapter (they must describe the base's own world)."""

    motion_prompts: tuple[str, ...] = GENERIC_MOTION_PROMPTS

    @classmethod
    def of(cls, preset: str, **extra) -> "PresetDefaults":
        return cls(**vars(PRESETS[preset]), **extra)


def _shapes_class_prompts() -> tuple[str, ...]:
    from engine.shapes import world

    return tuple(world.image_caption(s, c) for s in world.SHAPES for c in world.COLOURS)


PRESET_DEFAULTS = {
    "tiny": PresetDefaults.of("tiny"),
    "shapes": PresetDefaults.of("shapes", motion_prompts=_shapes_class_prompts()),
    "sd15": PresetDefaults.of("sd15"),
}


@dataclass
class BaseModels:
    """The loaded base: T2I components, motion adapter, where they run. Shared read-only by all jobs."""

    spec: ModelSpec
    device: torch.device
    dtype: torch.dtype
    components: dict
    motion_adapter: MotionAdapter
    unet_config_dir: Path
    defaults: PresetDefaults
    workdir: Path
    _motion_unet_cache: dict = field(default_factory=dict, repr=False)

    def sampling_motion_unet(self) -> UNetMotionModel:
        """The plain AnimateDiff UNet (base spatial layers + motion modules), built once; read-only."""
        if "base" not in self._motion_unet_cache:
            self._motion_unet_cache["base"] = build_motion_unet(self, self.components["unet"])
        return self._motion_unet_cache["base"]

    def sampling_forward(self):
        """What sampling calls for the base method: `sampling_motion_unet`, `torch.compile`d (once) when
        ``spec.compile_unet``."""
        if not self.spec.compile_unet:
            return self.sampling_motion_unet()
        if "compiled" not in self._motion_unet_cache:
            self._motion_unet_cache["compiled"] = compile_unet(self.sampling_motion_unet())
        return self._motion_unet_cache["compiled"]

    def base_motion_unet(self) -> UNetMotionModel:
        """A private copy of the plain AnimateDiff UNet, for attaching and training adapters."""
        return copy.deepcopy(self.sampling_motion_unet())


def check_num_frames(base: "BaseModels", num_frames: int) -> None:
    """A video longer than the motion modules' frame positions fails deep in the UNet: refuse it first."""
    positions = base.motion_adapter.config.motion_max_seq_length
    if num_frames > positions:
        raise SpecError(f"num_frames={num_frames} is more than the {positions} frame positions of the motion modules",
                        field="num_frames")


def place(module, device: torch.device, dtype: torch.dtype):
    """Move a module; cast only when the dtype differs (diffusers warns on every cast)."""
    module = module.to(device)
    if next(module.parameters()).dtype != dtype:
        module = module.to(dtype)
    return module


def resolve_device(spec: ModelSpec) -> tuple[torch.device, torch.dtype]:
    """CUDA when present (fp16 by default), else CPU in fp32; half precision on CPU is refused."""
    name = spec.device
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SpecError(f"device={spec.device!r} but CUDA is not available", field="device")
    precision = spec.precision
    if precision == "auto":
        precision = "float16" if device.type == "cuda" else "float32"
    if device.type == "cpu" and precision != "float32":
        raise SpecError(f"precision={spec.precision!r} is not supported on CPU; use float32", field="precision")
    return device, getattr(torch, precision)


def _load_tiny(workdir: Path) -> tuple[dict, MotionAdapter]:
    return tiny_models.build_tiny_components(workdir), tiny_models.build_tiny_motion_adapter()


def _load_pretrained(spec: ModelSpec, dtype: torch.dtype) -> tuple[dict, MotionAdapter]:
    """`from_pretrained` of an SD 1.5 pipeline layout and a motion adapter: hub ids or local directories."""
    kwargs = dict(cache_dir=spec.cache_dir, local_files_only=spec.local_files_only, torch_dtype=dtype)
    src, motion = spec.sources()
    try:
        components = {
            "unet": UNet2DConditionModel.from_pretrained(src, subfolder="unet", **kwargs),
            "vae": AutoencoderKL.from_pretrained(src, subfolder="vae", **kwargs),
            "text_encoder": CLIPTextModel.from_pretrained(src, subfolder="text_encoder", **kwargs),
            "tokenizer": CLIPTokenizer.from_pretrained(
                src, subfolder="tokenizer", cache_dir=spec.cache_dir, local_files_only=spec.local_files_only
            ),
            "scheduler": DDIMScheduler.from_pretrained(
                src, subfolder="scheduler", cache_dir=spec.cache_dir, local_files_only=spec.local_files_only
            ),
            "safety_checker": None,
            "feature_extractor": None,
            "requires_safety_checker": False,
        }
        adapter = MotionAdapter.from_pretrained(motion, **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"could not load base_model={src!r} / motion_adapter={motion!r}: {exc}") from exc
    return components, adapter


def load_base_models(spec: ModelSpec, workdir: Path) -> BaseModels:
    """Load (or build, for `tiny`) the base T2I and motion adapter onto the spec's device and dtype.

    `shapes` and `sd15` take the same path: `from_pretrained` of diffusers directories (or hub ids)."""
    if spec.preset not in PRESET_DEFAULTS:
        raise SpecError(f"preset={spec.preset!r}; expected one of {sorted(PRESET_DEFAULTS)}", field="preset")
    device, dtype = resolve_device(spec)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if spec.preset == "tiny":
        components, adapter = _load_tiny(workdir)
    else:
        components, adapter = _load_pretrained(spec, dtype)
    for name in ("unet", "vae", "text_encoder"):
        components[name] = place(components[name], device, dtype).eval().requires_grad_(False)
    adapter = place(adapter, device, dtype).eval().requires_grad_(False)
    if spec.enable_vae_slicing:
        components["vae"].enable_slicing()
    unet_config_dir = workdir / "unet_config"
    unet_config_dir.mkdir(exist_ok=True)
    (unet_config_dir / "config.json").write_text(json.dumps(dict(components["unet"].config), default=list))
    return BaseModels(spec, device, dtype, components, adapter, unet_config_dir, PRESET_DEFAULTS[spec.preset], workdir)


def build_motion_unet(base: BaseModels, unet2d: UNet2DConditionModel) -> UNetMotionModel:
    """Inflate a (possibly customized) SD UNet into AnimateDiff: its spatial weights + the motion modules."""
    unet = UNetMotionModel.from_unet2d(unet2d, base.motion_adapter)
    unet = place(unet, base.device, base.dtype).eval().requires_grad_(False)
    if base.spec.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    return unet


def compile_unet(unet: UNetMotionModel):
    """A `torch.compile` wrapper of `unet` for sampling: it shares the UNet's weights and adapters and leaves
    the UNet itself as it was (copies of it stay plain modules). Compiles at its first call per input shape."""
    return torch.compile(unet)


SCHEDULERS = {
    "ddim": (DDIMScheduler, {"beta_schedule": "linear", "clip_sample": False, "timestep_spacing": "linspace",
                             "steps_offset": 1}),
    "euler": (EulerDiscreteScheduler, {"beta_schedule": "linear", "timestep_spacing": "linspace", "steps_offset": 1}),
    "dpm++": (DPMSolverMultistepScheduler, {"beta_schedule": "linear", "algorithm_type": "dpmsolver++",
                                            "steps_offset": 1}),
}


def make_scheduler(base: BaseModels, name: str, steps: int | None = None):
    """A fresh sampling scheduler (AnimateDiff's recommended linear betas) from the base config.

    For a single step (`steps` 1) DDIM and Euler space it "trailing": their "linspace" puts a lone step at t=0,
    which returns the initial noise whatever the model predicts; "trailing" puts it at the last timestep (DPM++
    already does), so one step is the model's one-shot prediction. Every other step count is unchanged."""
    if name not in SCHEDULERS:
        raise SpecError(f"scheduler={name!r}; expected one of {sorted(SCHEDULERS)}", field="scheduler")
    cls, overrides = SCHEDULERS[name]
    if steps == 1 and overrides.get("timestep_spacing") == "linspace":
        overrides = overrides | {"timestep_spacing": "trailing"}
    return cls.from_config(base.components["scheduler"].config, **overrides)


def make_training_scheduler(base: BaseModels) -> DDPMScheduler:
    """The noise schedule used to add noise during adapter training (the base's own betas)."""
    return DDPMScheduler.from_config(base.components["scheduler"].config)
