"""stillmoving's ML engine: Still-Moving customization and video sampling on diffusers + peft.

A plain library: it imports neither FastAPI nor Celery and never reads the environment.

    base = load_base_models(ModelSpec(preset="shapes"), workdir)
    manifest = customize(base, "lora.safetensors", TrainSpec(prompts=("a sks dog",)), out_dir, cache_dir)
    custom = load_customization(base, out_dir, "lora.safetensors")
    result = generate(base, custom, SampleSpec(prompt="a sks dog running"), video_dir)
"""

from engine.annotators import load_annotator
from engine.artifact import MANIFEST as MANIFEST_FILE
from engine.artifact import SPATIAL_ADAPTER as SPATIAL_ADAPTER_FILE
from engine.artifact import Customization, load_customization, read_manifest
from engine.controlnets import load_controlnet
from engine.customize import customize
from engine.errors import (
    AdapterError,
    CancelledError,
    CheckpointError,
    EngineError,
    ModelLoadError,
    SpecError,
    SuspendedError,
)
from engine.models import BaseModels, load_base_models
from engine.motion_adapter import ADAPTER_FILE as MOTION_ADAPTER_FILE
from engine.motion_adapter import META_FILE as MOTION_META_FILE
from engine.motion_adapter import motion_adapter_key
from engine.motion_loras import MotionLora, read_motion_lora
from engine.sampling import generate
from engine.specs import ControlSpec, InitSpec, ModelSpec, MotionAdapterSpec, SampleSpec, TrainSpec
from engine.tiny_checkpoints import make_tiny_checkpoint
from engine.training import STATE_META as TRAIN_STATE_META

__all__ = [
    "AdapterError", "BaseModels", "CancelledError", "CheckpointError", "ControlSpec", "Customization",
    "EngineError", "InitSpec", "load_annotator", "load_controlnet",
    "ModelLoadError", "ModelSpec", "MotionAdapterSpec", "SampleSpec", "SpecError", "SuspendedError", "TrainSpec",
    "customize",
    "generate", "load_base_models", "load_customization", "make_tiny_checkpoint",
    "MANIFEST_FILE", "MOTION_ADAPTER_FILE", "MOTION_META_FILE", "SPATIAL_ADAPTER_FILE", "TRAIN_STATE_META",
    "motion_adapter_key", "read_manifest", "MotionLora", "read_motion_lora",
]
