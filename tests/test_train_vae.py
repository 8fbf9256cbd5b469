"""The tiny default VAE: its training recipe runs end to end, and the shipped weights are meaningful."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import animate
from animate.weights import load_vae
from common.cli import compose_config
from data.synthetic import SyntheticConfig, generate_dataset, make_clip
from experiments.train_vae import EVAL_FRAMES, clip_psnr, main, settings

SHIPPED_VAE = Path(animate.__file__).parent / "assets" / "tiny_wan_vae"
# PSNR of the shipped VAE on the clip below, measured when it was trained (docs/TINY_VAE.md)
SHIPPED_CLIP_PSNR = 27.77  # clip_psnr(load_vae(SHIPPED_VAE), *held_out_clip()) on the version-3 puppets (21.61 on version 2)
SHIPPED_CLIP_PSNR_PERSON = 23.64  # 15.32 on version 2
TINY_DATA = SyntheticConfig(
    train_clips=1, val_clips=0, test_clips=1, train_pairs=1, val_pairs=0, test_pairs=1, frames=EVAL_FRAMES, size=64, long_clips=0,
)


def held_out_clip() -> tuple[np.ndarray, np.ndarray]:
    """The first 17 frames and person mask of the first default synthetic test clip."""
    sample = make_clip(SyntheticConfig(), "test", 0)
    return sample.frames[:EVAL_FRAMES], sample.person_mask[:EVAL_FRAMES]


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory) -> Path:
    """A one-identity-per-split synthetic dataset at 64 px."""
    directory = tmp_path_factory.mktemp("puppets")
    generate_dataset(directory, TINY_DATA, progress=False)
    return directory


def test_tiny_training_run_reloads(tiny_dataset, tmp_path):
    out = tmp_path / "vae"
    argv = [f"out={out}", f"dataset={tiny_dataset}", "steps=3", "size=[32,64]", "pixels_per_step=2048"]
    summary = main(argv)
    assert sorted(path.name for path in out.iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors"]
    vae = load_vae(out)
    config = json.loads((out / "config.json").read_text())
    assert config["z_dim"] == 16 and len(config["latents_mean"]) == 16 and min(config["latents_std"]) > 0
    assert vae.config.latents_mean == pytest.approx(config["latents_mean"])
    # the reloaded weights reproduce the held-out score the run printed
    from experiments.train_vae import evaluate, load_split

    held_out = [s for s in load_split(tiny_dataset, "test") if s.meta["kind"] == "video"]
    assert evaluate(vae, held_out)["psnr"] == pytest.approx(summary["psnr"], abs=1e-6)


def test_size_must_be_multiples_of_16_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([f"out={tmp_path}", "size=[60,128]"])
    error = capsys.readouterr().err
    assert exit_info.value.code == 2 and error == "error: size=[60, 128]: need [MIN, MAX], multiples of 16 with 16 <= MIN <= MAX\n"
    with pytest.raises(ValueError, match="size="):
        settings(["out=unused", "size=[64]"])
    with pytest.raises(ValueError, match=r"temporal_downsample=\[True, True\]: needs one entry per downsampling level \(3\)"):
        settings(["out=unused", "dim_mult=[1,1,1,1]"])


def test_a_4x_spatial_vae_builds_from_three_levels():
    from experiments.train_vae import build_vae

    vae = build_vae(settings(["out=unused", "dim_mult=[1,1,1]", "temporal_downsample=[true,true]"]))
    assert vae.spatial_compression_ratio == 4
    assert vae.encode(torch.zeros(2, 3, 5, 32, 32)).latent_dist.mean.shape == (2, 16, 2, 8, 8)


def test_default_data_is_the_training_configs_puppets(monkeypatch, tmp_path):
    monkeypatch.setenv("ANIMATE_CACHE", str(tmp_path))
    puppets = settings(["out=unused"]).puppets
    data = compose_config("fit").data
    assert puppets["root"] == data.root == f"{tmp_path}/data/synthetic"
    assert SyntheticConfig(**puppets["synthetic"]) == SyntheticConfig(**data.synthetic) == SyntheticConfig()


def test_shipped_vae_is_small_float32():
    files = sorted(path.name for path in SHIPPED_VAE.iterdir())
    assert files == ["config.json", "diffusion_pytorch_model.safetensors"]
    assert (SHIPPED_VAE / "diffusion_pytorch_model.safetensors").stat().st_size < 4 * 2**20
    vae = load_vae(SHIPPED_VAE)
    assert {parameter.dtype for parameter in vae.parameters()} == {torch.float32}
    assert vae.config.z_dim == 16 and vae.config.temperal_downsample == [True, True] and vae.config.scale_factor_spatial == 4


def test_shipped_vae_pairs_with_4x4_patches_into_16_pixel_tokens():
    from animate.backbone import load_backbone

    architecture = dict(patch_size=[1, 4, 4], num_attention_heads=2, attention_head_dim=8, in_channels=16, out_channels=16,
                        text_dim=8, freq_dim=16, ffn_dim=16, num_layers=1)
    backbone = load_backbone({"architecture": architecture}, {"path": "asset:tiny_wan_vae"}, {"length": 2})
    assert backbone.compression.token_space == 16 and backbone.compression.vae_space == 4


def test_shipped_vae_reconstructs_held_out_clip():
    frames, mask = held_out_clip()
    psnr, psnr_person = clip_psnr(load_vae(SHIPPED_VAE), frames, mask)
    assert psnr > SHIPPED_CLIP_PSNR - 0.5
    assert psnr_person > SHIPPED_CLIP_PSNR_PERSON - 0.5


@torch.no_grad()
def test_shipped_latent_statistics_normalise_held_out_latents():
    vae = load_vae(SHIPPED_VAE)
    frames, _ = held_out_clip()
    video = torch.from_numpy(frames).float().div(127.5).sub(1).permute(3, 0, 1, 2)[None]  # (1, 3, T, H, W)
    latents = vae.encode(video).latent_dist.mean  # (1, 16, 5, h, w)
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
    normalised = (latents - mean) / std
    assert normalised.mean().abs() < 0.5
    assert 0.5 < normalised.std() < 2.0


def test_training_decode_matches_decode_but_keeps_gradients_of_overshooting_pixels():
    from experiments.train_vae import build_vae, decode_unclamped

    vae = build_vae(settings(["out=unused", "base_dim=8"]))
    with torch.no_grad():
        vae.decoder.conv_out.bias.fill_(2.0)  # every pixel overshoots +1
    latents = torch.randn(1, 16, 2, 2, 2, requires_grad=True)
    unclamped = decode_unclamped(vae, latents)
    assert torch.equal(unclamped.detach().clamp(-1, 1), vae.decode(latents).sample.detach())
    unclamped.square().mean().backward()
    assert latents.grad.abs().sum() > 0
    clamped = torch.randn(1, 16, 2, 2, 2, requires_grad=True)
    vae.decode(clamped).sample.square().mean().backward()
    assert clamped.grad is None or clamped.grad.abs().sum() == 0  # what decode_unclamped avoids


def test_fresh_vae_residual_blocks_start_as_their_shortcut():
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanResidualBlock

    from experiments.train_vae import INITIAL_LOGVAR, build_vae

    vae = build_vae(settings(["out=unused", "num_res_blocks=1", "dim_mult=[1,2,2,2]", "temporal_downsample=[false,true,true]"]))
    blocks = [m for m in vae.modules() if isinstance(m, WanResidualBlock)]
    assert blocks and all(not b.conv2.weight.any() and not b.conv2.bias.any() for b in blocks)
    assert torch.all(vae.quant_conv.bias[vae.config.z_dim :] == INITIAL_LOGVAR)


def test_default_recipe_builds_the_shipped_architecture():
    from experiments.train_vae import build_vae

    built = build_vae(settings(["out=unused"])).config
    shipped = load_vae(SHIPPED_VAE).config
    keys = ("base_dim", "decoder_base_dim", "dim_mult", "temperal_downsample", "num_res_blocks", "z_dim", "scale_factor_spatial")
    assert {key: built[key] for key in keys} == {key: shipped[key] for key in keys}


def test_hold_still_replaces_the_first_clips_by_their_first_frame():
    from experiments.train_vae import hold_still

    video = torch.randn(4, 3, 5, 8, 8)
    held, count = hold_still(video, 0.25)
    assert count == 1
    assert torch.equal(held[0], video[0, :, :1].expand(-1, 5, -1, -1)) and torch.equal(held[1:], video[1:])
    assert hold_still(video[:, :, :1], 0.5)[1] == 0  # single frames are already still
    assert hold_still(video, 0.0)[1] == 0


def test_still_consistency_is_zero_for_one_encoding_and_pulls_later_frames_to_frame_0():
    from experiments.train_vae import still_consistency

    one = torch.randn(2, 16, 1, 4, 4).expand(-1, -1, 3, -1, -1)
    assert still_consistency(one, 2) == 0
    latents = torch.randn(2, 16, 3, 4, 4, requires_grad=True)
    loss = still_consistency(latents, 1)
    assert loss > 0
    loss.backward()
    assert latents.grad[1].abs().sum() == 0  # only the still clip is constrained
    assert latents.grad[0, :, 1:].abs().sum() > 0


def test_init_fine_tunes_the_given_vae(tmp_path):
    from experiments.train_vae import build_vae

    vae = build_vae(settings(["out=unused", "init=asset:tiny_wan_vae", "base_dim=8"]))  # init's architecture wins
    shipped = load_vae(SHIPPED_VAE)
    assert vae.training and vae.config.base_dim == shipped.config.base_dim
    assert all(torch.equal(a, b.float()) for a, b in zip(vae.state_dict().values(), shipped.state_dict().values()))
    with pytest.raises(ValueError, match="still_fraction"):
        settings(["out=unused", "still_fraction=1.5"])


def test_a_decoder_fine_tune_keeps_the_latent_space(tiny_dataset, tmp_path):
    out = tmp_path / "vae"
    main([f"out={out}", f"dataset={tiny_dataset}", "init=asset:tiny_wan_vae", "train_part=decoder", "person_weight=4",
          "steps=2", "size=[32,64]", "pixels_per_step=2048", "lr=1e-2"])
    tuned, shipped = load_vae(out), load_vae(SHIPPED_VAE)
    before, after = shipped.state_dict(), tuned.state_dict()
    encoder_side = [name for name in before if name.startswith(("encoder.", "quant_conv."))]
    assert encoder_side and all(torch.equal(after[name].float(), before[name].float()) for name in encoder_side)
    assert any(not torch.equal(after[name].float(), before[name].float()) for name in before if name.startswith("decoder."))
    assert tuned.config.latents_mean == shipped.config.latents_mean and tuned.config.latents_std == shipped.config.latents_std
    with pytest.raises(ValueError, match="train_part=decoder: needs init"):
        settings(["out=unused", "train_part=decoder"])


def test_person_weight_adds_the_error_inside_the_person_mask():
    from experiments.train_vae import build_vae, training_loss

    args = settings(["out=unused", "init=asset:tiny_wan_vae"])
    vae = build_vae(args).eval()
    video = torch.rand(2, 3, 5, 32, 32) * 2 - 1
    person = torch.zeros(2, 1, 5, 32, 32)
    person[..., 8:24, 8:24] = 1
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        plain, parts = training_loss(vae, video, generator, args, person)
        weighted, _ = training_loss(vae, video, generator, settings(["out=unused", "init=asset:tiny_wan_vae", "person_weight=2"]), person)
        reconstruction = vae.decode(vae.encode(video).latent_dist.mean).sample
    inside = ((reconstruction - video).square() * person).mean()
    assert weighted - plain == pytest.approx(2 * inside.item(), rel=0.05)
