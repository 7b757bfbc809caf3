"""A customization's artifact: a directory with the spatial adapter, stills, preview and a manifest.

The manifest is written last: a directory with a manifest is complete. Everything needed to
regenerate the customization (checkpoint hash, base ids, every setting, seeds) is in it.
"""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from engine import adapters
from engine.checkpoints import file_sha256, load_customized_t2i
from engine.errors import CheckpointError, SpecError
from engine.models import BaseModels, build_motion_unet, compile_unet
from engine.motion_adapter import ADAPTER_FILE

MANIFEST = "manifest.json"
SPATIAL_ADAPTER = "spatial_adapter.safetensors"
MOTION_ADAPTER = ADAPTER_FILE  # only when trained for this customization (source "customized")
MANIFEST_VERSION = 1


@dataclass
class Customization:
    """A loaded customization: customized T2I components and the AnimateDiff UNet with its spatial adapter.

    `compiled_unet`: `unet` under `torch.compile` (`ModelSpec.compile_unet`), what sampling calls; None: eager.
    """

    manifest: dict
    components: dict
    unet: object
    directory: Path | None = None
    extra: dict = field(default_factory=dict)
    compiled_unet: object | None = None


def versions() -> dict[str, str]:
    """Library versions recorded in manifests (results depend on them)."""
    import diffusers
    import peft
    import torch
    import transformers

    return {"torch": torch.__version__, "diffusers": diffusers.__version__, "peft": peft.__version__,
            "transformers": transformers.__version__, "python": platform.python_version()}


def write_manifest(out_dir: Path, manifest: dict) -> Path:
    """Write the manifest atomically (temp file then rename): readers never see half a manifest."""
    manifest = {"manifest_version": MANIFEST_VERSION,
                "created_at": datetime.now(timezone.utc).isoformat(), **manifest}
    tmp = out_dir / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2, default=str))
    tmp.replace(out_dir / MANIFEST)
    return out_dir / MANIFEST


def read_manifest(directory: Path) -> dict:
    """Read a customization's manifest; a directory without one is not a (complete) customization."""
    path = Path(directory) / MANIFEST
    if not path.exists():
        raise SpecError(f"customization directory {str(directory)!r} has no {MANIFEST}", field="customization")
    return json.loads(path.read_text())


def load_customization(base: BaseModels, directory: Path, checkpoint_path: Path,
                       motion_adapter: Path | None = None) -> Customization:
    """Rebuild a customization: inject the checkpoint, inflate to AnimateDiff, attach the spatial adapter.

    Args:
        motion_adapter: the Motion Adapter file the customization was trained with (the cached one its
            manifest names); attached inactive, for sampling at `SampleSpec.motion_adapter_scale` != 0.
            A customization that trained its own has it in its directory: that one is used when this is None.

    Raises:
        CheckpointError: the checkpoint's hash differs from the one the manifest records.
    """
    directory = Path(directory)
    manifest = read_manifest(directory)
    if manifest.get("model") != base.spec.identity():
        raise SpecError(f"customization was made on {manifest.get('model')}, not on {base.spec.identity()}",
                        field="customization")
    expected = manifest["checkpoint"]["sha256"]
    if file_sha256(checkpoint_path) != expected:
        raise CheckpointError(f"checkpoint {str(checkpoint_path)!r} does not match sha256 {expected}",
                              field="checkpoint")
    _, components = load_customized_t2i(base.components, checkpoint_path, base.unet_config_dir)
    unet = build_motion_unet(base, components["unet"])
    adapters.load_adapter(unet, adapters.SPATIAL, directory / SPATIAL_ADAPTER)
    if motion_adapter is None and (manifest.get("motion_adapter") or {}).get("file"):
        motion_adapter = directory / manifest["motion_adapter"]["file"]
    if motion_adapter is not None:
        adapters.load_adapter(unet, adapters.MOTION, motion_adapter)
        adapters.activate(unet, [adapters.SPATIAL])
    compiled = compile_unet(unet) if base.spec.compile_unet else None
    return Customization(manifest=manifest, components=components, unet=unet, directory=directory,
                         compiled_unet=compiled)
