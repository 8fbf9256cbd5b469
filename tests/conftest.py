"""Shared fixtures and helpers: a tiny random Wan VAE and overrides that cut a real config to a smoke run."""

from pathlib import Path

import pytest
import torch


def _smoke_overrides(tmp: Path, steps: int = 2) -> list[str]:
    """Real configs, cut to a few steps on a tiny synthetic dataset (with the VAE of ``workdir``)."""
    return [
        f"trainer.max_steps={steps}", f"trainer.val_check_interval={steps}", "trainer.limit_val_batches=1",
        f"ckpt_every_n_steps={steps}", "logger=csv", "data.resolution=64", "data.frame_buckets=[5]",
        "data.batch_size=2", "data.num_workers=0", "data.val_samples=2", f"data.root={tmp}/data",
        "data.synthetic.train_clips=4", "data.synthetic.val_clips=2", "data.synthetic.test_clips=2",
        "data.synthetic.train_pairs=2", "data.synthetic.val_pairs=1", "data.synthetic.test_pairs=1",
        "data.synthetic.frames=9", "data.synthetic.size=64", "data.synthetic.long_clips=1", "data.synthetic.long_seconds=2",
        f"paths.cache={tmp}/cache", "method.sampler.steps=2",
        "callbacks.sample_videos.num_samples=1", f"backbone.vae.path={tmp}/vae",
    ]


@pytest.fixture(scope="session")
def smoke_overrides():
    """``smoke_overrides(tmp, steps=2)``: overrides that cut a real config to a smoke run in ``tmp``."""
    return _smoke_overrides


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """One tiny dataset, latent cache and random tiny Wan VAE shared by the runs of a test module.

    The smoke runs swap the shipped VAE for a smaller random one to stay fast; the shipped VAE
    has its own tests (tests/test_train_vae.py).
    """
    from diffusers import AutoencoderKLWan

    tmp = tmp_path_factory.mktemp("experiments")
    torch.manual_seed(0)
    # 4x spatial like the shipped VAE, so the tiny backbone's (1, 4, 4) patches make 16-pixel tokens
    AutoencoderKLWan(
        base_dim=4, z_dim=16, dim_mult=[1, 1, 1], num_res_blocks=1, temperal_downsample=[True, True], scale_factor_spatial=4
    ).save_pretrained(tmp / "vae")
    return tmp
