"""The committed customized T2Is of the shapes world in every upload format the product takes.

Two fine-tunes are committed (`engine.shapes.dreambooth`): a full UNet (diffusers keys) and a LoRA
(diffusers/peft keys). The kohya LoRA and the single-file LDM checkpoint are derived from them in
well under a second, so each weight exists once in git.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from safetensors.torch import load_file, save_file

from engine.checkpoint_formats import diffusers_unet_to_ldm, peft_lora_to_kohya
from engine.errors import SpecError
from engine.shapes import architecture, dreambooth
from engine.shapes.paths import CUSTOMIZED_DIR
from engine.tiny_checkpoints import FORMATS


def make_shapes_checkpoint(fmt: str, path: Path, prior_preservation: bool = True) -> Path:
    """Write the shapes world's customized checkpoint in upload format `fmt` (see `FORMATS`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lora_file = CUSTOMIZED_DIR / (dreambooth.LORA_FILE if prior_preservation else dreambooth.LORA_NO_PRIOR_FILE)
    if fmt == "lora":
        shutil.copyfile(lora_file, path)
        return path
    if fmt == "unet":
        shutil.copyfile(CUSTOMIZED_DIR / dreambooth.FULL_FILE, path)
        return path
    if fmt == "lora-kohya":
        lora = {k.removeprefix("unet."): v for k, v in load_file(str(lora_file)).items()}
        tensors = peft_lora_to_kohya(lora, alpha=dreambooth.LORA_RANK)
    elif fmt == "ldm":
        tensors = diffusers_unet_to_ldm(load_file(str(CUSTOMIZED_DIR / dreambooth.FULL_FILE)),
                                        architecture.UNET_CONFIG["layers_per_block"])
    else:
        raise SpecError(f"format={fmt!r}; expected one of {FORMATS}", field="format")
    save_file(tensors, str(path), metadata={"format": "pt"})
    return path
