"""Exports of a customization's Spatial Adapter, for use outside the service: built once, as training ends.

* ``diffusers``: a zip of ``pytorch_lora_weights.safetensors`` (peft keys under ``unet.``, the LoRA config in
  the file's ``lora_adapter_metadata``: written by diffusers' own ``save_lora_weights``) and a README with the
  Python that samples a video from it, for ``AnimateDiffPipeline.load_lora_weights``.
* ``kohya``: the same tensors in the kohya/A1111 layout (``lora_unet_…lora_down/lora_up/alpha``: diffusers'
  ``convert_state_dict_to_kohya``, via `checkpoint_formats.peft_lora_to_kohya`), one safetensors file.
* ``comfyui``: a zip of that kohya LoRA under ``models/loras/``, an AnimateDiff-Evolved workflow
  (`engine.comfyui`), a ``models.json`` naming every model file the workflow loads (which the bundle holds,
  which the user supplies: SD 1.5, the v1-5-2 motion module, their own checkpoint) and a README.

The Spatial Adapter is trained on the AnimateDiff UNet, whose spatial layers keep the SD UNet's names
(``down_blocks.0.attentions.0…``), so the same keys fit a plain SD 1.5 UNet (A1111, ComfyUI) too.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import zipfile
from pathlib import Path

from safetensors.torch import save_file

from common.exports import EXPORT_FORMATS, FILES
from engine import adapters, comfyui
from engine.checkpoint_formats import peft_lora_to_kohya
from engine.checkpoints import file_sha256

FORMATS = EXPORT_FORMATS
DIFFUSERS_WEIGHTS = "pytorch_lora_weights.safetensors"  # diffusers' LORA_WEIGHT_NAME_SAFE
ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed entry times: the same inputs give the same zip bytes


def write_diffusers_lora(adapter_file: Path, out_dir: Path) -> Path:
    """The Spatial Adapter as diffusers writes a pipeline's LoRA: ``unet.``-prefixed peft keys, its
    `LoraConfig` as adapter metadata (rank, alpha and target modules load as trained)."""
    from diffusers import AnimateDiffPipeline

    state, config = adapters.read_adapter(adapter_file)
    AnimateDiffPipeline.save_lora_weights(out_dir, unet_lora_layers=state, weight_name=DIFFUSERS_WEIGHTS,
                                          unet_lora_adapter_metadata=config.to_dict())
    return out_dir / DIFFUSERS_WEIGHTS


def write_kohya_lora(adapter_file: Path, path: Path) -> Path:
    """The Spatial Adapter in the kohya/A1111 layout, alpha = the trained ``lora_alpha``."""
    state, config = adapters.read_adapter(adapter_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(peft_lora_to_kohya(state, alpha=config.lora_alpha), str(path), metadata={"format": "pt"})
    return path


def _zip(path: Path, entries: dict[str, Path | str]) -> Path:
    """A zip of `entries` (name -> file to copy, or text); weights stored, text deflated, fixed times."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as archive:
        for name, content in entries.items():
            text = isinstance(content, str)
            info = zipfile.ZipInfo(name, date_time=ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED if text else zipfile.ZIP_STORED
            info.external_attr = 0o644 << 16
            with archive.open(info, "w") as out:
                if text:
                    out.write(content.encode())
                else:
                    with open(content, "rb") as source:
                        shutil.copyfileobj(source, out, 1 << 20)
    return path


def write_exports(directory: Path, manifest: dict, sample: dict, sources: tuple[str, str]) -> dict[str, dict]:
    """Write every export of the artifact in `directory` (its Spatial Adapter and `manifest`) under
    ``exports/``; return, for the manifest, ``{format: {"file": path relative to directory, "size", "sha256"}}``.

    Args:
        sample: the settings a video of the README and the workflow uses: ``num_frames``, ``height``, ``width``,
            ``steps``, ``guidance_scale``, ``prompt``, ``seed``.
        sources: the base model and motion adapter the customization was made on (hub ids or directories).
    """
    directory = Path(directory)
    adapter_file = directory / manifest["spatial_adapter"]["file"]
    names = comfyui.file_names(manifest)
    with tempfile.TemporaryDirectory(dir=directory) as scratch:
        work = Path(scratch)
        lora = write_diffusers_lora(adapter_file, work / "diffusers")
        readme = comfyui.diffusers_readme(manifest, sample, sources, DIFFUSERS_WEIGHTS)
        _zip(directory / FILES["diffusers"], {DIFFUSERS_WEIGHTS: lora, "README.md": readme})
        kohya = write_kohya_lora(adapter_file, directory / FILES["kohya"])
        workflow, models = comfyui.workflow(manifest, sample, names)
        _zip(directory / FILES["comfyui"], {
            f"{comfyui.LORA_FOLDER}/{names['spatial']}": kohya,
            comfyui.WORKFLOW_FILE: json.dumps(workflow, indent=2),
            comfyui.MODELS_FILE: json.dumps(models, indent=2),
            "README.md": comfyui.comfyui_readme(manifest, sample, names),
        })
    return {fmt: {"file": name, "size": (directory / name).stat().st_size,
                  "sha256": file_sha256(directory / name)} for fmt, name in FILES.items()}
