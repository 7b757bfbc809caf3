"""``GET /customizations/{id}/export``: a presigned URL to one of a customization's exports.

The worker builds every export as the training ends (`engine.exports`: diffusers' and peft's own writers and
converters need torch, which the API never loads; a re-layout of an adapter the job holds costs it well under a
second), and uploads them before the manifest: a ready customization's exports are stored, each once, and the
API only signs a URL to the same object for every request (no file passes through it). A customization trained
before exports existed has none: 409 ``export_unavailable``.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from api.deps import OwnedCustomization, StorageDep
from common.errors import Conflict
from common.exports import ExportFormat, checkpoint_file_name, download_name
from common.schemas import ExportView
from common.storage import checkpoint_key, customization_prefix

router = APIRouter(tags=["customizations"])


@router.get("/customizations/{customization_id}/export", response_model=ExportView,
            summary="A presigned URL to the customization's Spatial Adapter for diffusers, kohya/A1111 or ComfyUI",
            description="`diffusers`: a zip of the LoRA (peft keys, its config in the file's metadata) for "
                        "`AnimateDiffPipeline.load_lora_weights` and a README with the Python that samples the "
                        "service's video; `kohya`: the same LoRA in the kohya/A1111 layout (one .safetensors); "
                        "`comfyui`: a zip of the kohya LoRA, an AnimateDiff-Evolved workflow and the list of the "
                        "models it loads. `include_checkpoint`: also a URL to your uploaded checkpoint, which the "
                        "bundles name but never hold. 409 while the customization is not ready.")
def get_export(customization: OwnedCustomization, storage: StorageDep,
               format: Annotated[ExportFormat, Query(description="diffusers, kohya or comfyui")],
               include_checkpoint: bool = False) -> ExportView:
    if customization.status != "ready" or not customization.manifest:
        raise Conflict(f"customization {customization.id!r} is {customization.status}; its exports exist once it "
                       "is ready", field="customization_id", code="customization_not_ready")
    entry = (customization.manifest.get("exports") or {}).get(format)
    if entry is None:
        raise Conflict(f"customization {customization.id!r} was trained before {format} exports were built; train it "
                       "again to export it", field="format", code="export_unavailable")
    filename = download_name(customization.id, customization.name, format, entry["file"])
    view = ExportView(customization_id=customization.id, format=format, filename=filename, size=entry["size"],
                      sha256=entry["sha256"], expires_in_s=storage.settings.presign_expiry_s,
                      url=storage.presign(customization_prefix(customization.id) + entry["file"], filename=filename))
    if include_checkpoint:
        view.checkpoint_filename = checkpoint_file_name(customization.checkpoint_sha256)
        view.checkpoint_url = storage.presign(checkpoint_key(customization.checkpoint_sha256),
                                              filename=view.checkpoint_filename)
    return view
