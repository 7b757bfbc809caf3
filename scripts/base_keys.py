"""`python -m scripts.base_keys [PRESET ...]`: regenerate `common/base_keys/<preset>.json`, the key manifests
the API checks uploads against (pure stdlib there), from the real models: the configs of `sd15` (meta
weights), the committed `shapes` directories, the `tiny` models built in code."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from engine.real_size import build_sd15, key_manifest

OUT_DIR = Path(__file__).resolve().parents[1] / "common" / "base_keys"
PRESETS = ("tiny", "shapes", "sd15")


def manifest(preset: str) -> dict:
    """The `{"unet": {key: shape}, "text_encoder": {key: shape}}` manifest of a preset's base model."""
    if preset == "sd15":
        return key_manifest(build_sd15(meta=True))
    if preset == "tiny":
        from engine.tiny_models import build_tiny_components

        with tempfile.TemporaryDirectory() as scratch:
            return key_manifest(build_tiny_components(Path(scratch)))
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    from engine.shapes.paths import BASE_DIR

    return key_manifest({"unet": UNet2DConditionModel.from_pretrained(BASE_DIR / "unet"),
                         "text_encoder": CLIPTextModel.from_pretrained(BASE_DIR / "text_encoder")})


def main(argv: list[str]) -> None:
    for preset in argv or PRESETS:
        path = OUT_DIR / f"{preset}.json"
        path.write_text(json.dumps(manifest(preset)))
        print(f"wrote {path}")


if __name__ == "__main__":
    main(sys.argv[1:])
