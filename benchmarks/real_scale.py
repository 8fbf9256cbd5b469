"""What the real-scale benchmarks share: a composed config's system on the machine's device, with seeded random weights
of the real architecture for every part whose local weights are absent, and a random batch of a given shape.

On a GPU the system runs in bfloat16 at the requested shape; on a CPU the benchmarks run a scaled-down shape and say so
in their output (``scaled_down``), because a full-size step there takes hours and its time says nothing about a GPU.
"""

from __future__ import annotations

import copy
import os

import torch
from hydra.utils import instantiate

from animate.backbone import resolve_path
from benchmarks.train_step import compose_run

CPU_SHAPE = {"frames": 9, "size": (64, 112), "steps": 2}  # what a CPU runs instead of the requested shape
NOTHING_WRITTEN = ["method.latent_cache=null", "method.metrics=null"]  # a benchmark leaves no cache entries and computes no metrics


def from_architecture(cfg, only_missing: bool = True) -> list[str]:
    """Build backbone parts from their ``architecture`` (seeded random weights) instead of local files: those whose files are
    absent, or (``only_missing=False``) every part that has one, as a meta-device estimate wants; returns the parts changed."""
    changed = []
    backbone = cfg.backbone
    for part in ("transformer", "vae", "image_encoder"):
        node = backbone.get(part)
        if node and node.get("path") and node.get("architecture") and not (only_missing and resolve_path(node.path).exists()):
            node.path = None
            changed.append(part)
    text = backbone.get("text")
    if text and text.get("encoder") and not (only_missing and resolve_path(text.encoder).exists()):
        text.encoder = None  # the prompt is encoded once and cached in a real run: a stand-in of the same shape
        changed.append("text")
    return changed


def parameter_bytes(cfg, dtype: torch.dtype) -> int | None:
    """Bytes of the system's weights in ``dtype``, counted on the meta device (None when a part has files but no architecture: the tiny assets)."""
    cfg = copy.deepcopy(cfg)
    for part in ("transformer", "vae", "image_encoder"):
        node = cfg.backbone.get(part)
        if node and node.get("path"):
            if not node.get("architecture"):
                return None
            node.path = None
    with torch.device("meta"):
        system = instantiate(cfg.method)
    return sum(p.numel() for p in system.parameters()) * torch.finfo(dtype).bits // 8


def build(overrides: list[str], device: torch.device) -> tuple:
    """(system in eval mode on ``device``, config, the parts with random weights); bfloat16 on a GPU, float32 on a CPU."""
    os.environ.setdefault("ANIMATE_DATA", "/unused")
    cfg = compose_run([*overrides, *NOTHING_WRITTEN])
    random_parts = from_architecture(cfg)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if device.type == "cpu":
        needed, available = parameter_bytes(cfg, dtype), os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        if needed is not None and needed > 0.7 * available:
            raise SystemExit(f"error: the weights of {overrides} take {needed / 1e9:.1f} GB in float32, this machine has "
                             f"{available / 1e9:.1f} GB: run it on a GPU, or estimate its memory with python -m benchmarks.memory")
    torch.manual_seed(0)
    system = instantiate(cfg.method).to(device=device, dtype=dtype).eval()
    return system, cfg, random_parts


def random_batch(batch: int, frames: int, height: int, width: int, device: torch.device, dtype: torch.dtype, views: int = 0) -> dict:
    """Pixels in [-1, 1] of the batch keys the methods read, seeded."""
    generator = torch.Generator().manual_seed(0)
    rand = lambda *shape: (torch.rand(*shape, generator=generator) * 2 - 1).to(device=device, dtype=dtype)
    out = {
        "video": rand(batch, 3, frames, height, width),
        "pose": rand(batch, 3, frames, height, width),
        "reference": rand(batch, 3, height, width),
        "reference_pose": rand(batch, 3, height, width),
        "reference_mask": torch.zeros(batch, 1, height, width, device=device, dtype=dtype),
        "loss_weight": torch.ones(batch, 1 + (frames - 1) // 4, height // 16, width // 16, device=device),
    }
    if views:
        out["reference_views"] = rand(batch, views, 3, height, width)
    return out


def sync(device: torch.device) -> None:
    """Wait for queued GPU work so wall-clock times are real."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_gb(device: torch.device) -> float | None:
    """Peak GPU memory allocated since the last reset, in GB (None on a CPU)."""
    return round(torch.cuda.max_memory_allocated(device) / 1e9, 2) if device.type == "cuda" else None
