"""The lineart annotator's network and its pre/post-processing, vendored from controlnet_aux 0.0.10
(``controlnet_aux/lineart/__init__.py``: `Generator`, `ResidualBlock`, `LineartDetector.__call__`, and
``controlnet_aux/util.py``'s `resize_image`), so that the maps are the ones SD 1.5's v1.1 lineart ControlNet
(lllyasviel/control_v11p_sd15_lineart) was trained on, without importing controlnet_aux: its package imports every
detector and needs torchvision, which has no build for our CPU torch on the package registry.

Licences: controlnet_aux is Copyright The HuggingFace team, Apache License 2.0
(https://github.com/huggingface/controlnet_aux; its lineart file carries no header of its own). The network is the
generator of "Learning to generate line drawings that convey geometry and semantics" (Chan, Durand, Isola 2022;
https://github.com/carolineec/informative-drawings, MIT License, which adapts it from pix2pixHD and
pytorch-CycleGAN-and-pix2pix), as lllyasviel's ControlNet v1.1 ``annotator/lineart`` ships it.
Changes here: type hints, frames batched, weights read as a state dict only
(`torch.load(weights_only=True)` or safetensors) and checked against the architecture, and the map resized to the
caller's frame size instead of controlnet_aux's ``image_resolution``.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
from torch import nn

DETECT_RESOLUTION = 512  # controlnet_aux's default detect_resolution (and image_resolution): the short side
RESIDUAL_BLOCKS = 3  # LineartDetector builds Generator(3, 1, 3)


class ResidualBlock(nn.Module):
    def __init__(self, in_features: int):
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(in_features, in_features, 3), nn.InstanceNorm2d(in_features),
            nn.ReLU(inplace=True),
            nn.ReflectionPad2d(1), nn.Conv2d(in_features, in_features, 3), nn.InstanceNorm2d(in_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


class Generator(nn.Module):
    """RGB in 0..1 -> one channel in 0..1 (dark lines on white); attribute names as in ``sk_model.pth``."""

    def __init__(self, input_nc: int = 3, output_nc: int = 1, n_residual_blocks: int = RESIDUAL_BLOCKS,
                 sigmoid: bool = True):
        super().__init__()
        self.model0 = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(input_nc, 64, 7), nn.InstanceNorm2d(64),
                                    nn.ReLU(inplace=True))
        down: list[nn.Module] = []
        features = 64
        for _ in range(2):
            down += [nn.Conv2d(features, features * 2, 3, stride=2, padding=1), nn.InstanceNorm2d(features * 2),
                     nn.ReLU(inplace=True)]
            features *= 2
        self.model1 = nn.Sequential(*down)
        self.model2 = nn.Sequential(*[ResidualBlock(features) for _ in range(n_residual_blocks)])
        up: list[nn.Module] = []
        for _ in range(2):
            up += [nn.ConvTranspose2d(features, features // 2, 3, stride=2, padding=1, output_padding=1),
                   nn.InstanceNorm2d(features // 2), nn.ReLU(inplace=True)]
            features //= 2
        self.model3 = nn.Sequential(*up)
        self.model4 = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(64, output_nc, 7),
                                    *([nn.Sigmoid()] if sigmoid else []))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model4(self.model3(self.model2(self.model1(self.model0(x)))))


def load_generator(state: dict[str, torch.Tensor], where: str) -> Generator:
    """The lineart Generator with `state` (a state dict read from `where`); ValueError naming the first key that
    is missing, unexpected or of another shape (a file that is not sk_model.pth's layout)."""
    model = Generator()
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shaped = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or shaped:
        what = (f"{shaped[0]!r} has shape {tuple(state[shaped[0]].shape)}, expected {tuple(expected[shaped[0]].shape)}"
                if shaped else f"missing {missing[0]!r}" if missing else f"unexpected {unexpected[0]!r}")
        raise ValueError(f"{where} is not the lineart Generator's state dict ({len(missing)} missing, "
                         f"{len(unexpected)} unexpected, {len(shaped)} misshapen keys; {what})")
    model.load_state_dict(state)
    return model.eval().requires_grad_(False)


def resize_image(image: np.ndarray, resolution: int) -> np.ndarray:
    """controlnet_aux's `resize_image`: the short side to `resolution`, both sides rounded to multiples of 64."""
    height, width = image.shape[:2]
    k = float(resolution) / min(height, width)
    size = (int(np.round(width * k / 64.0)) * 64, int(np.round(height * k / 64.0)) * 64)
    return cv2.resize(image, size, interpolation=cv2.INTER_LANCZOS4 if k > 1 else cv2.INTER_AREA)


def detect(model: Generator, frames: np.ndarray, resolution: int = DETECT_RESOLUTION, batch: int = 8) -> np.ndarray:
    """(F, H, W, 3) uint8 RGB -> (F, H, W, 3) uint8 lineart maps, white lines on black, as LineartDetector makes
    them (coarse=False): each frame resized to `resolution`, the net's output truncated to uint8, resized
    (bilinear) to the frame's size and inverted."""
    height, width = frames.shape[1:3]
    device = next(model.parameters()).device
    sized = np.stack([resize_image(frame, resolution) for frame in frames])
    maps = []
    for start in range(0, len(sized), batch):
        images = torch.from_numpy(sized[start:start + batch]).float().to(device) / 255.0
        with torch.inference_mode():
            lines = model(images.permute(0, 3, 1, 2))[:, 0].float().cpu().numpy()
        for line in (lines * 255.0).clip(0, 255).astype(np.uint8):
            line = cv2.resize(np.repeat(line[..., None], 3, axis=-1), (width, height), interpolation=cv2.INTER_LINEAR)
            maps.append(255 - line)
    return np.stack(maps)
