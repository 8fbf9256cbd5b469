"""GPU memory of a configuration no one here can run, estimated on the meta device.

The config's system is built on the meta device (shapes, no storage) in bfloat16 and one training
step (forward + backward, with the config's block checkpointing) and one generation (a sampling
forward with its CFG levels batched, and the VAE decode) run on a meta batch of the real shape.
A dispatch mode follows every tensor they create and keeps the peak of the bytes alive at once:
the activations. Attention counts as a fused (flash) kernel: its output and log-sum-exp, never an
L x L matrix. Weights, gradients and Adam's states come from the parameter counts, per strategy
over N GPUs (ZeRO's accounting):

- ``ddp``: Lightning's bf16-mixed keeps float32 weights: 4 P + (4 + 8) T bytes per GPU;
- ``zero1`` / ``zero2`` / ``zero3`` (DeepSpeed, bf16): bf16 weights 2 P, bf16 gradients 2 T, float32
  master weights and Adam moments 12 T; stage 1 shards the 12 T over N, stage 2 also the gradients,
  stage 3 everything;
- ``fsdp`` (full shard, bf16 compute): float32 shards (4 P + 12 T) / N plus two blocks' bf16 weights
  gathered at a time (the current one and the prefetched next).

P counts every weight the system holds (transformer, VAE, image encoder, the method's modules), T
the trainable ones. Not counted: the CUDA context (about 0.5 GB), the allocator's fragmentation,
communication buffers, and a text encoder (the prompt is encoded once and cached). Measured
figures, where a GPU was available, are in docs/PERFORMANCE.md beside these.

    python -m benchmarks.memory conf=real/unianimate --gpus 8
    python -m benchmarks.memory conf=real/onetoall --frames 81 --size 576 1024 --guidance 1.5 2.5
"""

from __future__ import annotations

import argparse
import json
import os
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from unittest.mock import patch

import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from benchmarks.real_scale import NOTHING_WRITTEN, from_architecture
from benchmarks.train_step import compose_run
from data.buckets import COMMON_ASPECT_RATIOS, aspect_sizes

GB = 1e9
STRATEGIES = ("ddp", "zero1", "zero2", "zero3", "fsdp")


class PeakLiveBytes(TorchDispatchMode):
    """Follows the storage of every tensor created under it: bytes alive now and at the peak (views and in-place results add nothing)."""

    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0
        self._storages: dict[int, list[int]] = {}  # storage -> [tensors alive on it, bytes]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, Tensor):
                self._follow(tensor)
        return out

    def _follow(self, tensor: Tensor) -> None:
        storage = tensor.untyped_storage()
        key = storage._cdata
        if key not in self._storages:
            self._storages[key] = [0, storage.nbytes()]
            self.live += storage.nbytes()
            self.peak = max(self.peak, self.live)
        self._storages[key][0] += 1
        weakref.finalize(tensor, self._release, key)

    def _release(self, key: int) -> None:
        entry = self._storages.get(key)
        if entry is not None:
            entry[0] -= 1
            if entry[0] == 0:
                self.live -= entry[1]
                del self._storages[key]

    def restart_peak(self) -> None:
        """Measure the next phase's peak from what is alive now."""
        self.peak = self.live


class _FusedAttention(torch.autograd.Function):
    """The memory of a flash-attention kernel: a new output and log-sum-exp, gradients of q, k, v in backward; no L x L scores."""

    @staticmethod
    def forward(ctx, query: Tensor, key: Tensor, value: Tensor) -> Tensor:
        out = torch.empty_like(query)
        ctx.save_for_backward(query, key, value, out, query.new_empty(query.shape[:-1], dtype=torch.float32))
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        query, key, value, _, _ = ctx.saved_tensors
        return torch.empty_like(query), torch.empty_like(key), torch.empty_like(value)


@contextmanager
def fused_attention() -> Iterator[None]:
    """Route scaled-dot-product attention through :class:`_FusedAttention` (meta tensors carry no values to attend)."""
    original = F.scaled_dot_product_attention
    F.scaled_dot_product_attention = lambda query, key, value, *args, **kwargs: _FusedAttention.apply(query, key, value)
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


def static_bytes(strategy: str, parameters: int, trainable: int, gpus: int = 1, largest_block: int = 0) -> dict[str, float]:
    """Weights, gradients and optimizer state in bytes per GPU (Adam, bf16 compute) for ``strategy`` over ``gpus``."""
    p, t, n = parameters, trainable, gpus
    if strategy == "ddp":
        return {"weights": 4 * p, "gradients": 4 * t, "optimizer": 8 * t}
    if strategy.startswith("zero"):
        stage = int(strategy[-1])
        return {"weights": 2 * p / (n if stage == 3 else 1), "gradients": 2 * t / (n if stage >= 2 else 1), "optimizer": 12 * t / n}
    if strategy == "fsdp":
        return {"weights": 4 * p / n + 2 * 2 * largest_block, "gradients": 4 * t / n, "optimizer": 8 * t / n}
    raise ValueError(f"strategy {strategy!r}: use one of {', '.join(STRATEGIES)}")


def meta_batch(cfg, batch: int, frames: int, height: int, width: int) -> dict[str, Tensor]:
    """A training-format batch of the given shape on the meta device, bf16 pixels (face keypoints left out: no face motion)."""
    meta = dict(device="meta", dtype=torch.bfloat16)
    out = {
        "video": torch.zeros(batch, 3, frames, height, width, **meta),
        "pose": torch.zeros(batch, 3, frames, height, width, **meta),
        "reference": torch.zeros(batch, 3, height, width, **meta),
        "reference_pose": torch.zeros(batch, 3, height, width, **meta),
        "reference_mask": torch.zeros(batch, 1, height, width, **meta),
        "loss_weight": torch.ones(batch, 1 + (frames - 1) // 4, height // 16, width // 16, device="meta"),
    }
    views = int(cfg.data.get("reference_views") or 0)
    if views:
        out["reference_views"] = torch.zeros(batch, views, 3, height, width, **meta)
    return out


def largest_block_parameters(system: torch.nn.Module) -> int:
    """Parameters of the largest transformer block (what FSDP gathers at once)."""
    return max(sum(p.numel() for p in block.parameters()) for block in system.backbone.transformer.blocks)


def parameter_counts(system: torch.nn.Module) -> dict[str, int]:
    """Parameters by part: the transformer, VAE, image encoder, the method's own modules; and the trainable ones."""
    backbone = system.backbone
    parts = {"transformer": backbone.transformer, "vae": backbone.vae, "image_encoder": backbone.image_encoder}
    counts = {name: sum(p.numel() for p in module.parameters()) for name, module in parts.items() if module is not None}
    counts["method_modules"] = sum(p.numel() for p in system.parameters()) - sum(counts.values())
    counts["total"] = sum(p.numel() for p in system.parameters())
    counts["trainable"] = sum(p.numel() for p in system.parameters() if p.requires_grad)
    return counts


def training_activations(system, batch: dict[str, Tensor]) -> dict[str, float]:
    """Peak bytes alive beyond the weights while encoding a batch, and during its loss forward and backward (the config's checkpointing)."""
    generator = torch.Generator().manual_seed(0)
    with fused_attention(), PeakLiveBytes() as live:
        with torch.no_grad():
            latents = system.encode(system.prepare_batch(batch, augment=False), system.latent_inputs(training=True))
        encode = live.peak
        live.restart_peak()
        with patch.object(system, "encode", lambda batch, inputs: latents):  # the loss of these latents
            loss = system.loss(batch, generator)
            loss.backward()
        del loss
        gradients = sum(p.grad.untyped_storage().nbytes() for p in system.parameters() if p.grad is not None)
        step = live.peak - gradients  # the gradients are in the static part
    system.zero_grad(set_to_none=True)
    return {"encode": encode, "step": step}


def generation_activations(system, batch: dict[str, Tensor]) -> dict[str, float]:
    """Peak bytes alive beyond the weights while sampling one step (CFG levels batched) and while decoding."""
    with torch.no_grad(), fused_attention(), PeakLiveBytes() as live:
        latents = system.sample_latents(batch, steps=1)
        denoise = live.peak
        live.restart_peak()
        system.backbone.vae.decode(latents)
        decode = live.peak
    return {"denoise": denoise, "decode": decode}


def estimate(overrides: list[str], frames: int | None = None, size: tuple[int, int] | None = None, batch: int | None = None,
             gpus: int = 1, guidance: list[float] | None = None, training: bool = True) -> dict:
    """Parameters, per-GPU training memory per strategy and single-GPU generation memory of a composed config, in GB."""
    os.environ.setdefault("ANIMATE_DATA", "/unused")
    cfg = compose_run([*overrides, *NOTHING_WRITTEN])
    random_parts = from_architecture(cfg, only_missing=False)  # values do not matter here: never read weights
    frames = frames or max(cfg.data.frame_buckets)
    side = cfg.data.resolution or max(cfg.data.resolutions)
    ratios = list(cfg.data.aspect_ratios) if cfg.data.get("aspect_ratios") else COMMON_ASPECT_RATIOS
    height, width = size or max(aspect_sizes(side, ratios), key=lambda hw: (hw[0] * hw[1], hw[1]))  # the largest bucket, landscape
    batch = batch or cfg.data.batch_size
    with torch.device("meta"):
        system = instantiate(cfg.method)
    system = system.to(device="meta", dtype=torch.bfloat16).eval()  # weights loaded from files (the tiny assets) too; eval: no augmentation draws
    counts = parameter_counts(system)
    report: dict = {"config": overrides, "random_weights": random_parts, "shape": {"batch": batch, "frames": frames, "height": height, "width": width}, "parameters": counts}
    if training:
        phases = training_activations(system, meta_batch(cfg, batch, frames, height, width))
        activations = max(phases.values())
        report["training_gb_per_gpu"] = {"gpus": gpus, "encode_activations": round(phases["encode"] / GB, 3), "step_activations": round(phases["step"] / GB, 3)}
        for strategy in STRATEGIES:
            parts = static_bytes(strategy, counts["total"], counts["trainable"], gpus, largest_block_parameters(system))
            report["training_gb_per_gpu"][strategy] = round((sum(parts.values()) + activations) / GB, 3)
    if guidance is not None:
        system.sampler["guidance"] = list(guidance)
    for p in system.parameters():
        p.requires_grad_(False)
    peaks = generation_activations(system, meta_batch(cfg, 1, frames, height, width))
    weights = {name: 2 * counts[name] for name in ("transformer", "vae", "image_encoder", "method_modules") if name in counts}
    blocks = sum(p.numel() for p in system.backbone.transformer.blocks.parameters())
    resident = sum(weights.values())
    denoising = weights["transformer"] + weights["method_modules"] + weights.get("image_encoder", 0)
    report["generation_gb"] = {
        "guidance": list(system.sampler["guidance"]),
        "weights": round(resident / GB, 3),
        "denoise_activations": round(peaks["denoise"] / GB, 3),
        "decode_activations": round(peaks["decode"] / GB, 3),
        "peak": round((resident + max(peaks["denoise"], peaks["decode"])) / GB, 3),
        # model CPU offload: only the part at work on the GPU
        "peak_model_offload": round(max(denoising + peaks["denoise"], weights["vae"] + peaks["decode"]) / GB, 3),
        # sequential block offload (trainer=gpu_offload): everything but the blocks, and one block at a time
        "peak_block_offload": round((resident - 2 * blocks + 2 * largest_block_parameters(system) + max(peaks["denoise"], peaks["decode"])) / GB, 3),
    }
    return report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.memory", description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="conf=NAME and Hydra overrides, as for experiments.fit")
    parser.add_argument("--frames", type=int, default=None, help="clip frames (default: the config's longest frame bucket)")
    parser.add_argument("--size", type=int, nargs=2, default=None, metavar=("H", "W"), help="frame size (default: the config's largest bucket)")
    parser.add_argument("--batch", type=int, default=None, help="clips per GPU (default: data.batch_size)")
    parser.add_argument("--gpus", type=int, default=1, help="GPUs the static part is sharded over (ZeRO, FSDP)")
    parser.add_argument("--guidance", type=float, nargs="*", default=None, help="CFG scales for generation (default: the config's)")
    parser.add_argument("--no-training", action="store_true", help="generation only")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    report = estimate(args.overrides, args.frames, tuple(args.size) if args.size else None, args.batch, args.gpus, args.guidance, not args.no_training)
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
