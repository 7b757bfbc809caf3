"""The shapes world's model configurations (SD 1.5 / AnimateDiff layouts at toy size) and its tokenizer.

32x32 images, 8x8x4 latents (VAE factor 4): on 2 CPU cores a UNet step at batch 64 costs a fraction of a
second there, which is what lets the whole world train from nothing within the budget.
"""

from __future__ import annotations

import json
from pathlib import Path

from engine.shapes import world
from engine.tiny_models import byte_level_vocab

CROSS_DIM = 64
MAX_TOKENS = 16  # captions have at most 8 words; the pipelines pad to the tokenizer's model_max_length

VAE_CONFIG = dict(
    in_channels=3, out_channels=3, latent_channels=4, sample_size=world.SIZE,
    block_out_channels=(32, 64, 64), layers_per_block=1, norm_num_groups=16,
    down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
)
TEXT_CONFIG = dict(
    bos_token_id=0, eos_token_id=2, pad_token_id=1, hidden_size=CROSS_DIM, intermediate_size=128,
    num_attention_heads=4, num_hidden_layers=2, max_position_embeddings=MAX_TOKENS, layer_norm_eps=1e-5,
    projection_dim=CROSS_DIM,
)
UNET_CONFIG = dict(
    sample_size=world.SIZE // 4, in_channels=4, out_channels=4, block_out_channels=(64, 96), layers_per_block=1,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=CROSS_DIM, attention_head_dim=8, norm_num_groups=32,
)
MOTION_CONFIG = dict(
    block_out_channels=UNET_CONFIG["block_out_channels"], motion_layers_per_block=1, motion_norm_num_groups=32,
    motion_num_attention_heads=4, motion_max_seq_length=32, use_motion_mid_block=True,
)
SCHEDULER_CONFIG = dict(  # SD 1.5's betas on AnimateDiff's linear schedule: the one the product samples with
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="linear",
    clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon",
)


def write_tokenizer(directory: Path) -> Path:
    """A CLIP BPE tokenizer whose merges build each world word as one token (other text falls back to bytes)."""
    directory.mkdir(parents=True, exist_ok=True)
    vocab = byte_level_vocab()
    merges: list[str] = []
    for word in world.vocabulary():
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        while len(pieces) > 1:
            merge = f"{pieces[0]} {pieces[1]}"
            if merge not in merges:
                merges.append(merge)
            pieces = [pieces[0] + pieces[1]] + pieces[2:]
            vocab.setdefault(pieces[0], len(vocab))
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    (directory / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "!", "unk_token": "<|endoftext|>"}))
    (directory / "tokenizer_config.json").write_text(json.dumps(
        {"model_max_length": MAX_TOKENS, "pad_token": "!", "bos_token": "<|startoftext|>",
         "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "tokenizer_class": "CLIPTokenizer"}))
    return directory


def vocab_size(tokenizer_dir: Path) -> int:
    return len(json.loads((tokenizer_dir / "vocab.json").read_text()))
