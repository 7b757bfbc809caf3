"""CLIP-I and CLIP-T with real CLIP weights (a hub id or local directory given by the caller).

CLIP-I: mean cosine similarity of image embeddings over every (frame, reference image) pair (issue #12: a
best match per frame would reward a video that copies one reference). CLIP-T: mean cosine similarity of each frame's image embedding to the prompt's text embedding.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from transformers import CLIPModel, CLIPProcessor


def _features(output) -> torch.Tensor:
    """transformers 5 returns a model output from get_*_features; older versions a tensor."""
    feats = output if isinstance(output, torch.Tensor) else output.pooler_output
    return torch.nn.functional.normalize(feats.float(), dim=-1)


@dataclass
class ClipScorer:
    """A loaded CLIP model and processor."""

    model: CLIPModel
    processor: CLIPProcessor

    @classmethod
    def load(cls, name_or_path: str, local_files_only: bool = False) -> "ClipScorer":
        model = CLIPModel.from_pretrained(name_or_path, local_files_only=local_files_only).eval()
        return cls(model, CLIPProcessor.from_pretrained(name_or_path, local_files_only=local_files_only))

    @torch.no_grad()
    def image_embeddings(self, images: list[Image.Image]) -> torch.Tensor:
        inputs = self.processor(images=images, return_tensors="pt")
        return _features(self.model.get_image_features(pixel_values=inputs["pixel_values"]))

    @torch.no_grad()
    def text_embedding(self, prompt: str) -> torch.Tensor:
        inputs = self.processor(text=[prompt], return_tensors="pt", padding=True, truncation=True)
        return _features(self.model.get_text_features(input_ids=inputs["input_ids"],
                                                      attention_mask=inputs.get("attention_mask")))

    def scores(self, video: np.ndarray, references: list[Image.Image], prompt: str) -> dict[str, float]:
        """``{"clip_i", "clip_t"}`` for a uint8 (F, H, W, 3) video."""
        frames = self.image_embeddings([Image.fromarray(f) for f in video])
        refs = self.image_embeddings(references)
        text = self.text_embedding(prompt)
        return {"clip_i": float((frames @ refs.T).mean()),
                "clip_t": float((frames @ text.T).mean())}
