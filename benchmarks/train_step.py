"""Time one method's training step, split into data, VAE encode and DiT forward + backward + optimizer.

Composes the same config as ``python -m experiments.fit conf=NAME [overrides]``, draws one real
batch from the run's datamodule, then times ``--steps`` optimizer steps on it (after ``--warmup``
untimed ones) with the VAE latents pre-encoded, so the numbers isolate the parts a user tunes.
Prints one JSON object (median seconds per part, steps/s, peak memory).

    python -m benchmarks.train_step conf=unianimate
    python -m benchmarks.train_step conf=frameprompt data.batch_size=2 --steps 10
    python -m benchmarks.train_step conf=unianimate backbone=wan21_t2v_1_3b trainer=gpu   # on a GPU machine
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from animate.callbacks import move_batch, peak_memory_mb
from experiments.cli import CONF_DIR
from metrics.evaluation import resolve_device


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.train_step", description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="conf=NAME and Hydra overrides, as for experiments.fit")
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    return parser.parse_args(argv)


def compose_run(overrides: list[str]):
    """The composed fit config of ``conf=NAME`` plus overrides (Hydra's run-dir interpolations stubbed)."""
    conf = next((o.split("=", 1)[1] for o in overrides if o.startswith("conf=")), "fit")
    rest = [o for o in overrides if not o.startswith("conf=")]
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose(conf, overrides=[*rest, "paths.run_dir=/tmp/benchmark_train_step", "run_name=benchmark"])


def sync(device: torch.device) -> None:
    """Wait for queued GPU work so wall-clock times are real."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> tuple[float, object]:
    """(seconds, result) of one call."""
    sync(device)
    start = time.perf_counter()
    result = fn()
    sync(device)
    return time.perf_counter() - start, result


def main(argv: list[str] | None = None) -> dict:
    """Measure and print the step-time breakdown."""
    args = parse_args(argv)
    cfg = compose_run(args.overrides)
    device = resolve_device(args.device)
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    system = instantiate(cfg.method, latent_cache=None).to(device)
    optimizer = system.configure_optimizers()
    optimizer = optimizer["optimizer"] if isinstance(optimizer, dict) else optimizer
    data_seconds, batch = timed(lambda: next(iter(datamodule.train_dataloader())), device)
    batch = system.prepare_batch(move_batch(batch, device), augment=True)  # the method's own inputs (One-to-All's outpainting mask), drawn once
    inputs = system.latent_inputs(training=True)
    with torch.no_grad():
        encode_seconds, latents = timed(lambda: system.encode(batch, inputs), device)
    system.encode = lambda batch, inputs: latents  # the DiT step alone from here on
    system.train()

    def step() -> None:
        loss = system.loss(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(args.warmup):
        step()
    times = [timed(step, device)[0] for _ in range(args.steps)]
    median = statistics.median(times)
    result = {
        "conf": cfg.get("run_name"),
        "overrides": args.overrides,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "batch": list(batch["video"].shape),  # (B, 3, T, H, W)
        "trainable_parameters": sum(p.numel() for p in system.parameters() if p.requires_grad),
        "data_batch_s": round(data_seconds, 4),
        "vae_encode_s": round(encode_seconds, 4),
        "dit_step_s_median": round(median, 4),
        "dit_step_s_min": round(min(times), 4),
        "dit_steps_per_s": round(1 / median, 3),
        "peak_memory_mb": {k: round(v, 1) for k, v in peak_memory_mb().items()},
    }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
