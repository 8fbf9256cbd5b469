"""The suite gives the same numbers on one process and on two CPU processes (gloo)."""

import json

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from metrics.frechet import FID, FVD
from metrics.pixel import PSNR, SSIM, FacePSNR, MaskedPSNR
from metrics.suite import MetricSuite

CLIPS = 5  # split 3 / 2 over two processes


class MeanColour:
    """Toy frame features: mean colour (the Frechet sums are what is under test)."""

    frames, dim = None, 3

    def __call__(self, frames):
        return frames.float().mean(dim=(2, 3))


class WindowMean:
    """Toy window features: mean colour of 4-frame windows."""

    frames, dim = 4, 3

    def __call__(self, windows):
        return windows.float().mean(dim=(2, 3, 4))


def make_suite() -> MetricSuite:
    """Pixel metrics, masked/face metrics that skip frames, and two Frechet metrics."""
    return MetricSuite(
        {
            "psnr": PSNR(),
            "ssim": SSIM(),
            "psnr_mask": MaskedPSNR(),
            "fpsnr": FacePSNR(),
            "fid": FID(extractor=MeanColour()),
            "fvd": FVD(extractor=WindowMean(), window_stride=2),
        }
    )


def clip(index: int) -> tuple[torch.Tensor, ...]:
    """One clip pair with keypoints (a faceless frame) and a person mask (an empty frame)."""
    generator = torch.Generator().manual_seed(index)
    frames = 6 + index  # clips of different lengths
    target = torch.rand(1, 3, frames, 24, 24, generator=generator)
    generated = (target + 0.1 * torch.randn(target.shape, generator=generator)).clamp(0, 1)
    keypoints = torch.zeros(1, frames, 133, 3)
    keypoints[..., 23:91, 0] = torch.linspace(4, 16, 68)
    keypoints[..., 23:91, 1] = torch.linspace(5, 18, 68)
    keypoints[..., 23:91, 2] = 0.9
    keypoints[:, 0, :, 2] = 0.0
    person_mask = torch.rand(1, frames, 24, 24, generator=generator) > 0.5
    person_mask[:, -1] = False
    return generated, target, keypoints, person_mask


def evaluate(suite: MetricSuite, indices) -> dict[str, float]:
    """Update with the given clips and compute."""
    for index in indices:
        generated, target, keypoints, person_mask = clip(index)
        suite.update(generated, target, keypoints=keypoints, person_mask=person_mask)
    return suite.compute()


def worker(rank: int, world_size: int, init_file: str, out_file: str) -> None:
    """One DDP process: its share of the clips, then the synced result (rank 0 writes it)."""
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        results = evaluate(make_suite(), range(rank, CLIPS, world_size))
        if rank == 0:
            with open(out_file, "w") as file:
                json.dump(results, file)
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_give_the_single_process_numbers(tmp_path):
    single = evaluate(make_suite(), range(CLIPS))
    out_file = tmp_path / "ddp.json"
    mp.spawn(worker, args=(2, str(tmp_path / "init"), str(out_file)), nprocs=2, join=True)
    distributed = json.loads(out_file.read_text())
    assert distributed.keys() == single.keys()
    for name, value in single.items():
        assert distributed[name] == pytest.approx(value, rel=1e-9, abs=1e-12), name
    assert single["fpsnr_skipped_frames"] == CLIPS and single["psnr_mask_skipped_frames"] == CLIPS
