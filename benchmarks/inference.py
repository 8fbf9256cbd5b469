"""Wall time, time per step and peak GPU memory of generating one clip, per CFG setting (One-to-All's Table 4 by default).

Table 4 (H100, 81 x 576 x 1024, 30 steps, bf16): 1.3B 29 GB, 0:59 / 1:58 / 2:57 with 1 / 2 / 3 CFG passes per step;
14B 65 GB, 3:41 / 7:43 / 11:12. The system is the config's (its method's modules, VAE and image encoder included), its
weights local or, when absent, seeded random weights of the real architecture (the time does not depend on them). The
wall time covers encoding the reference and poses, every step and the VAE decode; the prompt's embedding is cached in a
real run and not timed. On a CPU a scaled-down shape runs instead, marked ``scaled_down``.

    python -m benchmarks.inference conf=real/onetoall                                   # 1.3B, 1 / 2 / 3 passes
    python -m benchmarks.inference conf=real/onetoall backbone=wan21_t2v_14b method.extractor_blocks=7
    python -m benchmarks.inference conf=real/onetoall --cache-threshold 0.1              # with step caching
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from benchmarks.real_scale import CPU_SHAPE, build, peak_gb, random_batch, sync
from metrics.evaluation import resolve_device

TABLE_4 = {"frames": 81, "size": (576, 1024), "steps": 30}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.inference", description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="conf=NAME and Hydra overrides, as for experiments.fit")
    parser.add_argument("--frames", type=int, default=None, help=f"clip frames (GPU default {TABLE_4['frames']})")
    parser.add_argument("--size", type=int, nargs=2, default=None, metavar=("H", "W"), help=f"frame size (GPU default {TABLE_4['size']})")
    parser.add_argument("--steps", type=int, default=None, help=f"sampling steps (GPU default {TABLE_4['steps']})")
    parser.add_argument("--guidance", nargs="+", default=None,
                        help="comma-separated scales per setting (default: one per pass count the method has, e.g. 1,1 1.5,1.5 1.5,2.5)")
    parser.add_argument("--cache-threshold", type=float, default=0.0, help="step caching (sampler.cache_threshold); 0 = off")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    return parser.parse_args(argv)


def guidance_settings(levels: int) -> list[list[float]]:
    """Scales that make 1, 2, ... ``levels`` passes per step for a method with ``levels`` CFG levels (Eq. 16)."""
    if levels == 1:
        return [[]]
    if levels == 2:
        return [[1.0], [1.5]]
    return [[1.0] * (levels - 1), [1.5] * (levels - 1), [1.5 + 1.0 * i for i in range(levels - 1)]]


@torch.no_grad()
def measure(system, batch: dict, guidance: list[float], steps: int, cache_threshold: float, device: torch.device) -> dict:
    """One timed generation after an untimed one: wall time, time per step, passes per step, peak memory."""
    stamps: list[float] = []
    rows: list[int] = []

    def on_step(index, x, t, velocity) -> None:
        sync(device)
        stamps.append(time.perf_counter())

    hook = system.backbone.register_forward_pre_hook(lambda module, args: rows.append(args[0].latents.shape[0]))
    try:
        system.generate(batch, steps=1, guidance=guidance, cache_threshold=cache_threshold)  # warm-up: kernels, allocator
        rows.clear()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        sync(device)
        start = time.perf_counter()
        system.generate(batch, steps=steps, guidance=guidance, cache_threshold=cache_threshold, on_step=on_step)
        sync(device)
        wall = time.perf_counter() - start
    finally:
        hook.remove()
    per_step = [b - a for a, b in zip(stamps, stamps[1:])]
    cache = system.step_cache
    return {
        "guidance": guidance,
        "passes_per_step": sum(rows) / (len(rows) * batch["reference"].shape[0]) if rows else None,
        "wall_s": round(wall, 2),
        "step_s_median": round(statistics.median(per_step), 3) if per_step else None,
        "reused_fraction": round(cache.reuse_fraction, 3) if cache is not None else 0.0,
        "peak_gpu_gb": peak_gb(device),
    }


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device = resolve_device(args.device)
    scaled_down = device.type == "cpu" and args.size is None
    shape = CPU_SHAPE if scaled_down else TABLE_4
    frames, (height, width), steps = args.frames or shape["frames"], tuple(args.size or shape["size"]), args.steps or shape["steps"]
    system, cfg, random_parts = build(args.overrides, device)
    dtype = next(system.parameters()).dtype
    batch = random_batch(1, frames, height, width, device, dtype, views=int(cfg.data.get("reference_views") or 0))
    settings = [[float(s) for s in g.split(",") if s] for g in args.guidance] if args.guidance else guidance_settings(len(system.guidance_levels))
    report = {
        "config": args.overrides,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "dtype": str(dtype).removeprefix("torch."),
        "attention_backend": cfg.backbone.get("attention_backend"),
        "random_weights": random_parts,
        "scaled_down": scaled_down,
        "shape": {"frames": frames, "height": height, "width": width, "steps": steps},
        "parameters": sum(p.numel() for p in system.parameters()),
        "results": [measure(system, batch, g, steps, args.cache_threshold, device) for g in settings],
    }
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
