"""The reference image's CLIP tokens for the image cross-attention of Wan I2V and Wan2.2-Animate.

Wan encodes the reference with open-clip's ``xlm-roberta-large-vit-huge-14`` visual tower and feeds
its penultimate layer's tokens (257 x 1280 for ViT-H/14 at 224 px) to every block's cross-attention
beside the text. The diffusers releases of Wan (``Wan2.1-I2V-14B-480P-Diffusers`` and the Animate
ones) hold that tower as a ``transformers`` ``CLIPVisionModel`` in ``image_encoder/`` and its
preprocessing in ``image_processor/``; this module loads them from a local directory (``pip install
-e ".[text]"`` brings ``transformers``) and runs the preprocessing on tensors, so a batch of
references is encoded on the GPU in one call. UniAnimate-DiT's official code feeds these tokens;
a backbone whose transformer takes image tokens refuses to run without them unless told to
(``backbone.image_encoder.skip``), see :func:`animate.backbone.load_backbone`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP's normalisation, as Wan's image_processor/
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ClipImageEncoder(nn.Module):
    """A CLIP vision tower with its preprocessing: images (B, 3, H, W) in [-1, 1] -> penultimate tokens (B, S, D)."""

    def __init__(self, model: nn.Module, size: int | None = None, crop: int | None = None,
                 mean: tuple[float, ...] = CLIP_MEAN, std: tuple[float, ...] = CLIP_STD):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.size = size or model.config.image_size  # shortest side after resizing
        self.crop = crop or model.config.image_size  # centre crop side
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self._fingerprint: str | None = None

    @property
    def dim(self) -> int:
        """Token width D (the transformer's ``image_dim``)."""
        return self.model.config.hidden_size

    def preprocess(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) in [-1, 1] -> CLIP pixel values (B, 3, crop, crop): shortest side resized (bicubic), centre crop, normalised."""
        x = (images.float().clamp(-1, 1) + 1) / 2
        h, w = x.shape[-2:]
        scale = self.size / min(h, w)
        x = F.interpolate(x, size=(max(self.crop, round(h * scale)), max(self.crop, round(w * scale))), mode="bicubic", antialias=True, align_corners=False)
        top, left = (x.shape[-2] - self.crop) // 2, (x.shape[-1] - self.crop) // 2
        x = x[..., top : top + self.crop, left : left + self.crop].clamp(0, 1)
        return (x - self.mean) / self.std

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        """CLIP tokens (B, S, D) of the penultimate layer (Wan's ``use_31_block``) for images (B, 3, H, W) in [-1, 1]."""
        dtype = next(self.model.parameters()).dtype
        hidden = self.model(pixel_values=self.preprocess(images).to(dtype), output_hidden_states=True).hidden_states
        return hidden[-2].float()

    @torch.no_grad()
    def fingerprint(self) -> str:
        """A hash of the weights and preprocessing: cached tokens are valid for this encoder only (computed once)."""
        if self._fingerprint is None:
            digest = hashlib.sha1(repr((sorted(self.model.config.to_dict().items()), self.size, self.crop)).encode())
            for name, tensor in sorted(self.model.state_dict().items()):
                digest.update(name.encode())
                digest.update(tensor.detach().float().cpu().numpy().tobytes())
            self._fingerprint = digest.hexdigest()[:16]
        return self._fingerprint


def load_image_encoder(path: str | Path, processor: str | Path | None = None) -> ClipImageEncoder:
    """A local ``CLIPVisionModel`` directory (Wan's ``image_encoder/``) with the sizes and normalisation of ``processor`` (``image_processor/``)."""
    from transformers import CLIPImageProcessor, CLIPVisionModel

    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"image encoder directory {path} has no config.json (expected Wan's image_encoder/, a transformers CLIPVisionModel)")
    model = CLIPVisionModel.from_pretrained(path, local_files_only=True)
    if processor is None:
        return ClipImageEncoder(model)
    if not (Path(processor) / "preprocessor_config.json").is_file():
        raise FileNotFoundError(f"image processor directory {processor} has no preprocessor_config.json (expected Wan's image_processor/)")
    settings = CLIPImageProcessor.from_pretrained(processor, local_files_only=True)
    size = settings.size.get("shortest_edge") or min(settings.size.get("height", 0), settings.size.get("width", 0)) or None
    crop = settings.crop_size.get("height") if settings.do_center_crop else None
    return ClipImageEncoder(model, size, crop, tuple(settings.image_mean), tuple(settings.image_std))


def new_image_encoder(**config) -> ClipImageEncoder:
    """A randomly initialised CLIP vision tower from ``CLIPVisionConfig`` keywords (benchmarks, the meta device, tests)."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    return ClipImageEncoder(CLIPVisionModel(CLIPVisionConfig(**config)))
