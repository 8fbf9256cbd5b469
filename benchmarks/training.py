"""Training throughput of one config: clips per second, seconds per step, peak GPU memory and model FLOPs utilisation.

The issue's target: Wan2.1-1.3B at 29 frames and 512 px trains at 40% MFU or more and fits a 48 GB card. One optimizer
step is forward, backward and AdamW over the trainable weights with the config's block checkpointing, on a random batch
whose VAE latents are encoded once before timing (the DiT step is what a cluster pays for; encoding is
``benchmarks/train_step.py``'s). On a GPU the weights are float32 under bfloat16 autocast, as Lightning's bf16-mixed.
Model FLOPs are counted on the meta device at the same shape without checkpointing (recomputation does not count as
model FLOPs); MFU divides them by the step time and the GPU's dense bf16 peak (``--peak-tflops``, else a table of known
GPUs). On a CPU a scaled-down shape runs, marked ``scaled_down``, and MFU is not given.

    python -m benchmarks.training conf=real/onetoall_stage3 --frames 29 --size 512 512
    python -m benchmarks.training conf=real/frameprompt --frames 29 --size 512 512 --steps 10
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from unittest.mock import patch

import torch
from hydra.utils import instantiate
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.memory import meta_batch
from benchmarks.real_scale import CPU_SHAPE, NOTHING_WRITTEN, build, from_architecture, peak_gb, random_batch, sync
from benchmarks.train_step import compose_run
from metrics.evaluation import resolve_device

# dense bfloat16 tensor-core peaks (TFLOP/s), by a substring of torch.cuda.get_device_name
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100 SXM": 989.0, "H100 PCIe": 756.0, "H100 NVL": 835.0, "H100": 989.0, "H800": 989.0, "H20": 148.0,
                    "A100": 312.0, "A800": 312.0, "L40S": 362.0, "L40": 181.0, "A6000": 155.0, "RTX 4090": 165.0, "B200": 2250.0}
DEFAULT_SHAPE = {"frames": 29, "size": (512, 512)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.training", description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="conf=NAME and Hydra overrides, as for experiments.fit")
    parser.add_argument("--frames", type=int, default=None, help=f"clip frames (GPU default {DEFAULT_SHAPE['frames']})")
    parser.add_argument("--size", type=int, nargs=2, default=None, metavar=("H", "W"), help=f"frame size (GPU default {DEFAULT_SHAPE['size']})")
    parser.add_argument("--batch", type=int, default=1, help="clips per step")
    parser.add_argument("--steps", type=int, default=10, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the GPU's dense bf16 peak (default: from the table)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    return parser.parse_args(argv)


def peak_tflops(device: torch.device, given: float | None) -> float | None:
    """The device's dense bf16 peak: ``given``, else the first table entry in its name (None for a CPU or an unknown GPU)."""
    if given is not None or device.type != "cuda":
        return given
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_TFLOPS.items() if key in name), None)


def model_flops(overrides: list[str], batch: int, frames: int, height: int, width: int) -> int:
    """FLOPs of one loss forward and backward without recomputation, counted on the meta device (encoding excluded)."""
    cfg = compose_run([*overrides, *NOTHING_WRITTEN, "backbone.gradient_checkpointing=false"])
    from_architecture(cfg, only_missing=False)
    with torch.device("meta"):
        system = instantiate(cfg.method)
    system = system.to(device="meta", dtype=torch.bfloat16).eval()
    pixels = meta_batch(cfg, batch, frames, height, width)
    with torch.no_grad():
        latents = system.encode(system.prepare_batch(pixels, augment=False), system.latent_inputs(training=True))
    counter = FlopCounterMode(display=False)
    with patch.object(system, "encode", lambda batch, inputs: latents), counter:
        system.loss(pixels, torch.Generator().manual_seed(0)).backward()
    return counter.get_total_flops()


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device = resolve_device(args.device)
    scaled_down = device.type == "cpu" and args.size is None
    frames = args.frames or (CPU_SHAPE if scaled_down else DEFAULT_SHAPE)["frames"]
    height, width = tuple(args.size or (CPU_SHAPE if scaled_down else DEFAULT_SHAPE)["size"])
    system, cfg, random_parts = build(args.overrides, device)
    system = system.float().train()  # float32 weights; bf16 compute under autocast on a GPU (Lightning's bf16-mixed)
    batch = random_batch(args.batch, frames, height, width, device, torch.float32, views=int(cfg.data.get("reference_views") or 0))
    batch = system.prepare_batch(batch, augment=False)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    with torch.no_grad(), autocast:
        latents = system.encode(batch, system.latent_inputs(training=True))
    optimizer = system.configure_optimizers()
    optimizer = optimizer["optimizer"] if isinstance(optimizer, dict) else optimizer

    def step() -> None:
        with autocast:
            loss = system.loss(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    with patch.object(system, "encode", lambda batch, inputs: latents):
        for _ in range(args.warmup):
            step()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        times = []
        for _ in range(args.steps):
            sync(device)
            start = time.perf_counter()
            step()
            sync(device)
            times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    flops = model_flops(args.overrides, args.batch, frames, height, width)  # attention counted as the L x L products it computes
    peak = peak_tflops(device, args.peak_tflops)
    report = {
        "config": args.overrides,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "random_weights": random_parts,
        "scaled_down": scaled_down,
        "shape": {"batch": args.batch, "frames": frames, "height": height, "width": width},
        "gradient_checkpointing": bool(system.backbone.gradient_checkpointing),
        "trainable_parameters": sum(p.numel() for p in system.parameters() if p.requires_grad),
        "step_s_median": round(seconds, 3),
        "clips_per_s": round(args.batch / seconds, 3),
        "model_tflops_per_step": float(f"{flops / 1e12:.4g}"),
        "achieved_tflops": float(f"{flops / seconds / 1e12:.4g}"),
        "mfu": round(flops / seconds / (peak * 1e12), 3) if peak else None,
        "peak_gpu_gb": peak_gb(device),
    }
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
