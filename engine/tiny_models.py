"""The `tiny` preset: random-weight SD 1.5 / AnimateDiff look-alikes built offline, in code.

Every process that builds them gets bit-identical weights (fixed seeds, CPU init), so an API
validator, a worker and a test agree on the same "base model" without any download.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, MotionAdapter, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

TINY_BLOCK_OUT = (16, 32)
TINY_CROSS_DIM = 32
TINY_SEED = 0

UNET_CONFIG = dict(
    block_out_channels=TINY_BLOCK_OUT,
    layers_per_block=2,
    sample_size=16,
    in_channels=4,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=TINY_CROSS_DIM,
    attention_head_dim=4,
    norm_num_groups=4,
)
VAE_CONFIG = dict(
    block_out_channels=TINY_BLOCK_OUT,
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
    up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
    latent_channels=4,
    norm_num_groups=4,
    sample_size=32,
)
TEXT_CONFIG = dict(
    bos_token_id=0,
    eos_token_id=2,
    hidden_size=TINY_CROSS_DIM,
    intermediate_size=37,
    layer_norm_eps=1e-05,
    num_attention_heads=4,
    num_hidden_layers=2,
    pad_token_id=1,
    vocab_size=1000,
    max_position_embeddings=77,
)
MOTION_CONFIG = dict(
    block_out_channels=TINY_BLOCK_OUT,
    motion_layers_per_block=2,
    motion_norm_num_groups=4,
    motion_num_attention_heads=2,
    motion_max_seq_length=32,
)
SCHEDULER_CONFIG = dict(
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte-to-printable-character table (the BPE alphabet)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def byte_level_vocab() -> dict[str, int]:
    """CLIP's special tokens (bos 0, pad "!" 1, eos 2) and every byte character, alone and word-final."""
    chars = list(_bytes_to_unicode().values())
    vocab: dict[str, int] = {"<|startoftext|>": 0, "!": 1, "<|endoftext|>": 2}
    for token in chars + [c + "</w>" for c in chars]:
        vocab.setdefault(token, len(vocab))
    return vocab


def write_tiny_tokenizer(directory: Path) -> Path:
    """Write a character-level CLIP BPE vocabulary (no merges) loadable by `CLIPTokenizer.from_pretrained`."""
    directory.mkdir(parents=True, exist_ok=True)
    vocab = byte_level_vocab()
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n")
    (directory / "tokenizer_config.json").write_text(
        json.dumps({"model_max_length": 77, "pad_token": "!", "tokenizer_class": "CLIPTokenizer"})
    )
    return directory


def build_tiny_components(workdir: Path) -> dict:
    """Build the tiny SD 1.5 pipeline components (seeded) and return them by pipeline argument name."""
    torch.manual_seed(TINY_SEED)
    unet = UNet2DConditionModel(**UNET_CONFIG)
    torch.manual_seed(TINY_SEED + 1)
    vae = AutoencoderKL(**VAE_CONFIG)
    torch.manual_seed(TINY_SEED + 2)
    text_encoder = CLIPTextModel(CLIPTextConfig(**TEXT_CONFIG))
    tokenizer = CLIPTokenizer.from_pretrained(write_tiny_tokenizer(workdir / "tokenizer"))
    return {
        "unet": unet.eval(),
        "vae": vae.eval(),
        "text_encoder": text_encoder.eval(),
        "tokenizer": tokenizer,
        "scheduler": DDIMScheduler(**SCHEDULER_CONFIG),
        "safety_checker": None,
        "feature_extractor": None,
        "requires_safety_checker": False,
    }


def build_tiny_motion_adapter() -> MotionAdapter:
    """Random-weight motion adapter shaped for the tiny UNet (seeded)."""
    torch.manual_seed(TINY_SEED + 3)
    return MotionAdapter(**MOTION_CONFIG).eval()


# A DPT depth estimator (the architecture of Intel/dpt-hybrid-midas without its BiT stem) at 32x32: a tiny ViT
# whose four layers feed DPT's reassemble/fusion neck and depth head.
DEPTH_CONFIG = dict(hidden_size=16, num_hidden_layers=4, num_attention_heads=2, intermediate_size=32, image_size=32,
                    patch_size=8, neck_hidden_sizes=[8, 8, 16, 16], fusion_hidden_size=8,
                    backbone_out_indices=[0, 1, 2, 3])


def save_tiny_depth_estimator(directory: Path | str) -> Path:
    """Write a random-weight (seeded) DPT depth estimator and its image processor to `directory`, in the layout
    `from_pretrained` reads (a `depth` annotator's weights for tests: ``annotator_models={"depth": directory}``)."""
    from transformers import DPTConfig, DPTForDepthEstimation, DPTImageProcessorPil

    directory = Path(directory)
    torch.manual_seed(TINY_SEED + 6)
    DPTForDepthEstimation(DPTConfig(**DEPTH_CONFIG)).save_pretrained(directory)
    DPTImageProcessorPil(size={"height": 32, "width": 32}, keep_aspect_ratio=False).save_pretrained(directory)
    return directory


# A ViTPose pose estimator (COCO's 17 keypoints, the simple decoder of usyd-community/vitpose-base-simple) on
# 64x48 crops: two ViT layers.
POSE_BACKBONE_CONFIG = dict(image_size=[64, 48], patch_size=[16, 16], hidden_size=32, num_hidden_layers=2,
                            num_attention_heads=2, mlp_ratio=2, out_indices=[2])


def save_tiny_pose_estimator(directory: Path | str) -> Path:
    """Write a random-weight (seeded) ViTPose estimator and its image processor to `directory` (an `openpose`
    annotator's weights for tests: ``annotator_models={"openpose": directory}``)."""
    from transformers import VitPoseBackboneConfig, VitPoseConfig, VitPoseForPoseEstimation, VitPoseImageProcessorPil

    directory = Path(directory)
    torch.manual_seed(TINY_SEED + 7)
    config = VitPoseConfig(backbone_config=VitPoseBackboneConfig(**POSE_BACKBONE_CONFIG), num_labels=17)
    VitPoseForPoseEstimation(config).save_pretrained(directory)
    VitPoseImageProcessorPil(size={"height": 64, "width": 48}).save_pretrained(directory)
    return directory


def save_tiny_lineart(directory: Path | str, safetensors: bool = False) -> Path:
    """Write a random-weight (seeded) lineart Generator's state dict to `directory` as lllyasviel/Annotators lays it
    out (``sk_model.pth``; ``sk_model.safetensors`` with `safetensors`): a `lineart` annotator's weights for tests,
    ``annotator_models={"lineart": directory}``. Its architecture is fixed (4.3M parameters, 17 MB)."""
    from engine.lineart_model import Generator

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(TINY_SEED + 8)
    state = Generator().state_dict()
    if safetensors:
        from safetensors.torch import save_file

        save_file(state, directory / "sk_model.safetensors")
    else:
        torch.save(state, directory / "sk_model.pth")
    return directory
