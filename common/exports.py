"""A customization's exports (built by `engine.exports` as training ends, served by ``GET
/customizations/{id}/export``): the formats, and the name a download is saved under. Torch- and pydantic-free."""

from __future__ import annotations

from typing import Literal, get_args

ExportFormat = Literal["diffusers", "kohya", "comfyui"]
EXPORT_FORMATS: tuple[str, ...] = get_args(ExportFormat)
EXPORTS_DIR = "exports"  # under the customization's artifact
FILES = {"diffusers": f"{EXPORTS_DIR}/diffusers.zip", "kohya": f"{EXPORTS_DIR}/kohya.safetensors",
         "comfyui": f"{EXPORTS_DIR}/comfyui.zip"}  # each format's built file, relative to the artifact


def download_name(customization_id: str, name: str | None, fmt: str, stored_file: str) -> str:
    """``<name or id>-<format>.<suffix of the stored file>``, in characters every browser and shell keeps."""
    stem = "".join(c if c.isalnum() or c in "-_" else "-" for c in (name or customization_id)).strip("-")[:64]
    return f"{stem or customization_id}-{fmt}.{stored_file.rsplit('.', 1)[-1]}"


def spatial_file_name(adapter_sha256: str) -> str:
    """The Spatial Adapter's file in a ComfyUI bundle: content-addressed, so several customizations' LoRAs sit
    side by side in ComfyUI's folders."""
    return f"stillmoving-spatial-{adapter_sha256[:12]}.safetensors"


def checkpoint_file_name(checkpoint_sha256: str) -> str:
    """The name the exports give the user's uploaded checkpoint (the bundle names it; the user supplies it)."""
    return f"stillmoving-customization-{checkpoint_sha256[:12]}.safetensors"
