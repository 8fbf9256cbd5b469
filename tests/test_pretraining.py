"""The base recipes: per-frame noise levels in T2V pretraining (conf=base) and the tiny I2V base (conf=base_i2v)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

import animate
from animate.methods.base import reference_clip_pixels
from animate.methods.image_to_video import FIRST_FRAME_CLIP, ImageToVideo
from animate.methods.text_to_video import HELD_FRAMES, OWN_TIMES, TextToVideo, draw_frame_noise
from animate.methods.unianimate import UniAnimate
from common.cli import compose_config

from tiny_systems import ADAMW, fake_batch, text_to_video, tiny_backbone

ROOT = Path(__file__).resolve().parent.parent
ASSETS = Path(animate.__file__).parent / "assets"
ENV = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
TIMES = dict(mode="logit_normal", mean=0.0, std=1.0, shift=1.0)
DRAWS = 20_000  # samples per statistical check: a share's standard error is at most 0.0035


def draws(clean_frames: str, independent: float = 0.2, clean: float = 0.3, frames: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Held frames and own times of DRAWS samples at a fixed seed."""
    return draw_frame_noise(DRAWS, frames, independent, clean, clean_frames, TIMES, generator=torch.Generator().manual_seed(seed))


def flow_pair_of(system: TextToVideo, batch: dict, augment: bool = True):
    """The training flow pair of a batch (one draw of its times and noise), with its sequence."""
    batch = system.prepare_batch(batch, augment=augment)
    seq = system.sequence(batch, system.encode(batch, system.latent_inputs(training=True)), {}, training=True)
    t = torch.rand(seq.clean.shape[0])
    return system.flow_pair(seq, torch.randn_like(seq.clean), t), seq, t


# ----- per-frame noise levels -------------------------------------------------------------------------
@pytest.mark.parametrize("clean_frames", ["first", "prefix", "subset"])
def test_frame_noise_draws_have_the_configured_shares(clean_frames):
    held, own_times = draws(clean_frames)
    own = ~own_times.isnan()  # (B, F)
    independent, holding = own.all(dim=1), held.any(dim=1)
    assert torch.equal(own.any(dim=1), independent)  # a sample has its own time on every frame or on none
    assert independent.float().mean().item() == pytest.approx(0.2, abs=0.01)
    assert holding.float().mean().item() == pytest.approx(0.3, abs=0.01)
    assert not (independent & holding).any()  # the kinds exclude each other; the rest is plain
    assert (~independent & ~holding).float().mean().item() == pytest.approx(0.5, abs=0.01)
    assert ((own_times[independent] > 0) & (own_times[independent] < 1)).all()
    assert own_times[independent].mean().item() == pytest.approx(0.5, abs=0.01)  # logit-normal around 1/2, as the one time is drawn
    assert (own_times[independent].std(dim=1) > 0).all()  # every frame its own time
    counts = held[holding].sum(dim=1)  # k held frames per holding sample
    assert counts.min() >= 1 and counts.max() <= 4  # at least one frame held, one generated
    if clean_frames == "first":
        assert held[holding, 0].all() and (counts == 1).all()
        return
    for k in range(1, 5):  # k uniform in 1..F-1
        assert (counts == k).float().mean().item() == pytest.approx(0.25, abs=0.02)
    if clean_frames == "prefix":
        assert torch.equal(held, held.cummin(dim=1).values)  # held frames are the first k
    else:  # a random k-subset: every frame held in half the holding samples (E[k] / F = 2.5 / 5)
        assert torch.allclose(held[holding].float().mean(dim=0), torch.full((5,), 0.5), atol=0.02)
        assert not torch.equal(held, held.cummin(dim=1).values)


def test_a_one_frame_clip_holds_nothing():
    held, _ = draws("prefix", frames=1)
    assert held.shape == (DRAWS, 1) and not held.any()


def test_held_clean_frames_carry_no_loss_and_stay_at_time_zero():
    system = text_to_video(frame_noise=dict(clean=1.0, clean_frames="prefix"))
    torch.manual_seed(0)
    pair, seq, t = flow_pair_of(system, fake_batch(b=4, t=13))  # 4 latent frames
    held = ~seq.generate
    assert held.any(dim=1).all() and seq.generate.any(dim=1).all()
    assert (pair.t[held] == 0).all() and (pair.weight.transpose(1, 2)[held] == 0).all()
    torch.testing.assert_close(pair.model_input.transpose(1, 2)[held], seq.clean.transpose(1, 2)[held])  # x_0 is the clean frame
    assert torch.equal(pair.t, torch.where(seq.generate, t[:, None], 0.0))  # the generated frames share the sample's time
    assert (pair.weight.transpose(1, 2)[seq.generate] == 1).all()


def test_independent_samples_train_every_frame_at_its_own_time():
    system = text_to_video(frame_noise=dict(independent=1.0))
    torch.manual_seed(0)
    pair, seq, _ = flow_pair_of(system, fake_batch(b=4, t=13))
    assert seq.generate.all() and torch.equal(pair.t, seq.own_times)
    assert (pair.t.std(dim=1) > 0).all() and (pair.weight == 1).all()


def test_equal_noise_samples_validation_and_sampling_keep_one_time_for_all_frames():
    batch = fake_batch(b=4, t=13)
    torch.manual_seed(0)
    pair, seq, t = flow_pair_of(text_to_video(), batch)  # both shares 0: nothing drawn
    assert torch.equal(pair.t, t[:, None].expand(4, 4)) and seq.generate.all() and seq.own_times is None
    mixed = text_to_video(frame_noise=dict(independent=0.5, clean=0.5))
    assert HELD_FRAMES not in mixed.prepare_batch(batch, augment=False) and OWN_TIMES not in mixed.prepare_batch(batch, augment=False)
    _, val_seq, _ = flow_pair_of(mixed, batch, augment=False)  # validation's fixed draw: no augmentation
    assert val_seq.generate.all() and val_seq.own_times is None
    fixed = lambda system: system.loss(batch, torch.Generator().manual_seed(1000))  # noqa: E731
    assert fixed(mixed).item() == fixed(text_to_video()).item()  # val/loss: the equal-noise T2V loss
    sequences = mixed.sampling_sequences(batch, [0])
    assert sequences[0].generate.all() and sequences[0].own_times is None
    assert torch.equal(mixed.generate(batch), text_to_video().generate(batch))


def test_frame_noise_settings_are_checked():
    for bad, message in [
        (dict(independent=0.7, clean=0.5), "shares of the samples"),
        (dict(clean=-0.1), "shares of the samples"),
        (dict(clean_frames="last"), "clean_frames='last'"),
        (dict(shared=0.1), "unknown keys"),
    ]:
        with pytest.raises(ValueError, match=message):
            TextToVideo(tiny_backbone(16), ADAMW, frame_noise=bad)
    with pytest.raises(ValueError, match="loss_weighting=bell"):
        TextToVideo(tiny_backbone(16), ADAMW, frame_noise=dict(independent=0.2), time_sampling=dict(loss_weighting="bell"))


def test_the_base_recipe_sets_frame_noise_and_the_method_file_keeps_the_plain_objective():
    from omegaconf import OmegaConf

    from animate.methods.text_to_video import FRAME_NOISE_DEFAULTS

    method = OmegaConf.load(ROOT / "conf" / "method" / "text_to_video.yaml")["method"]
    assert OmegaConf.to_container(method.frame_noise) == FRAME_NOISE_DEFAULTS
    recipe = compose_config("base").method.frame_noise
    assert recipe.independent + recipe.clean < 1 and recipe.clean_frames == "prefix"


# ----- the I2V base --------------------------------------------------------------------------------------
def image_to_video(**kw) -> ImageToVideo:
    """A tiny I2V base (36 input channels, no CFG)."""
    return ImageToVideo(tiny_backbone(36), ADAMW, **(dict(sampler=dict(steps=2, guidance=[1.0])) | kw))


def first_frame_batch(batch: dict) -> dict:
    """``batch`` with the clip's first frame as its reference, as UniAnimate would have to be given it."""
    return batch | {"reference": batch["video"][:, :, 0]}


@pytest.mark.parametrize("training", [True, False])
def test_the_i2v_sequence_is_unianimates_i2v_layout_of_the_first_frame(training):
    i2v, uni = image_to_video(), UniAnimate(tiny_backbone(36), ADAMW, reference_latent="i2v", reference_pose_encoder=False)
    batch = fake_batch()
    drops = {"image": torch.tensor([False, True])}  # the second sample's image dropped: UniAnimate's reference drop
    prepared = i2v.prepare_batch(batch, augment=False)
    seq = i2v.sequence(prepared, i2v.encode(prepared, i2v.latent_inputs(training)), drops, training)
    other = first_frame_batch(batch)
    expected = uni.build_sequence(other, uni.encode(other, uni.latent_inputs(training)), {"reference": drops["image"], "pose": torch.tensor([True, True])}, training)
    assert seq.target == expected.target and torch.equal(seq.generate, expected.generate) and seq.generate.all()  # frame 0 generated too
    for name in ("clean", "loss_weight", "channel_cond"):
        torch.testing.assert_close(getattr(seq, name), getattr(expected, name))
    assert seq.channel_cond.shape[1] == 4 + 16 and (seq.channel_cond[0, :4, 0] == 1).all() and not seq.channel_cond[0, :4, 1:].any()
    assert not seq.channel_cond[1].any() and not seq.injections and seq.image_context is None  # dropped: the mask too; no image tokens


def test_i2v_animates_the_clips_first_frame_not_the_datamodules_reference():
    system = image_to_video().eval()
    with torch.no_grad():  # the widened channels start at zero, which would hide the image
        torch.nn.init.normal_(system.backbone.transformer.patch_embedding.weight[:, 16:], std=0.5)
    batch = fake_batch()
    video = system.generate(batch, seed=3)
    later = batch["video"].clone()
    later[:, :, 1:] = 0  # the rest of the clip and the reference are not read
    assert torch.equal(system.generate(batch | {"video": later, "reference": torch.zeros_like(batch["reference"])}, seed=3), video)
    first = batch["video"].clone()
    first[:, :, 0] = 0
    assert not torch.equal(system.generate(batch | {"video": first}, seed=3), video)
    own = {k: v for k, v in batch.items() if k != "video"} | {"reference": batch["video"][:, :, 0]}  # your own image, no clip
    assert torch.equal(system.generate(own, seed=3), video)


def test_i2v_latents_are_cached_apart_from_unianimates_reference_latents(tmp_path):
    batch = fake_batch()  # one cache key per clip, shared by every method
    i2v = image_to_video(latent_cache=str(tmp_path))
    uni = UniAnimate(tiny_backbone(36), ADAMW, reference_latent="i2v", latent_cache=str(tmp_path))
    prepared = i2v.prepare_batch(batch, augment=False)
    first = i2v.encode(prepared, i2v.latent_inputs(training=False))[FIRST_FRAME_CLIP]
    reference = uni.encode(batch, uni.latent_inputs(training=False))["reference_clip"]  # after the I2V entries exist
    torch.testing.assert_close(reference, uni.backbone.vae.encode(reference_clip_pixels(batch)))  # its own reference, not the first frame
    torch.testing.assert_close(first, i2v.backbone.vae.encode(reference_clip_pixels(first_frame_batch(batch))))
    assert not torch.allclose(first, reference) and i2v.latent_cache.misses == uni.latent_cache.misses == 2
    assert torch.equal(i2v.encode(prepared, i2v.latent_inputs(training=False))[FIRST_FRAME_CLIP], first) and i2v.latent_cache.hits == 2
    assert i2v.prepare_batch({k: v for k, v in batch.items() if k != "video"}, augment=False)["cache_key"] is None  # your own image: uncached


def test_i2v_trains_every_frame_and_refuses_a_backbone_without_i2v_channels():
    system = image_to_video(condition_dropout=dict(image=0.1))
    loss = system.loss(fake_batch())
    loss.backward()
    assert torch.isfinite(loss) and system.backbone.transformer.patch_embedding.weight.grad[:, 16:].abs().sum() > 0
    with pytest.raises(ValueError, match="in_channels = 36"):
        ImageToVideo(tiny_backbone(16), ADAMW)
    with pytest.raises(ValueError, match="unknown to ImageToVideo"):
        image_to_video(condition_dropout=dict(reference=0.1))


def test_the_i2v_recipe_widens_the_shipped_t2v_base_with_zero_initialised_channels():
    from animate.weights import load_transformer

    base = load_transformer(ASSETS / "tiny_wan_t2v").patch_embedding.weight
    cfg = compose_config("base_i2v")
    widened = instantiate(cfg.backbone).transformer.patch_embedding.weight  # (D, 36, 1, 4, 4)
    assert cfg.backbone.transformer.path == "asset:tiny_wan_t2v" and cfg.method.condition_dropout.image == 0.1
    assert widened.shape[1] == 36 and torch.equal(widened[:, :16], base) and not widened[:, 16:].any()


# ----- the recipes as a user runs them ---------------------------------------------------------------
@pytest.fixture(scope="module")
def fast_dev_fit(workdir, smoke_overrides):
    """``fast_dev_fit(conf)``: ``python -m experiments.fit conf=CONF trainer.fast_dev_run=true`` on the tiny data, once per module; (result, run dir)."""
    runs = {}

    def fit(conf: str) -> tuple[subprocess.CompletedProcess, Path]:
        if conf not in runs:
            run = workdir / f"fast_dev_{conf}"
            command = [sys.executable, "-m", "experiments.fit", f"conf={conf}", *smoke_overrides(workdir), "trainer.fast_dev_run=true", f"hydra.run.dir={run}"]
            runs[conf] = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600), run
        return runs[conf]

    return fit


@pytest.mark.parametrize("conf", ["base", "base_i2v"])
def test_the_base_recipes_run_one_fast_dev_step(conf, fast_dev_fit):
    result, run = fast_dev_fit(conf)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "`Trainer.fit` stopped: `max_steps=1` reached." in result.stderr + result.stdout
    assert (run / "last.ckpt").exists() and not (run / "checkpoints").exists()  # fast_dev_run: no step checkpoints


def test_an_exported_i2v_base_loads_with_its_36_channels_and_unianimate_builds_on_it_unwidened(fast_dev_fit, workdir):
    from experiments.prediction import base_system, load_run

    result, run = fast_dev_fit("base_i2v")
    assert result.returncode == 0, result.stderr[-3000:]
    out = workdir / "tiny_wan_i2v"
    export = subprocess.run([sys.executable, "-m", "experiments.export", f"ckpt={run / 'last.ckpt'}", f"out={out}"], cwd=ROOT, env=ENV,
                            capture_output=True, text=True, timeout=300)
    assert export.returncode == 0, export.stderr[-3000:]
    assert json.loads((out / "config.json").read_text())["in_channels"] == 36
    trained = load_run(str(run / "last.ckpt"))[0].backbone.transformer.patch_embedding.weight
    overrides = [f"backbone.transformer.path={out}", f"backbone.vae.path={workdir / 'vae'}"]
    plain = compose_config("fit", ["backbone=tiny_i2v", "method=text_to_video", *overrides])  # no method widens it
    assert plain.backbone.transformer.in_channels is None
    loaded = instantiate(plain.backbone)
    assert loaded.in_channels == 36 and "patch_embedding.weight" in loaded.pretrained  # as stored, not widened
    torch.testing.assert_close(loaded.transformer.patch_embedding.weight, trained.detach().half().float())
    cfg = compose_config("unianimate", ["backbone=tiny_i2v", "method.reference_latent=i2v", *overrides, f"paths.cache={workdir / 'cache'}"])
    system = instantiate(cfg.method)
    assert isinstance(system, UniAnimate) and system.backbone.in_channels == 36 and "patch_embedding.weight" in system.backbone.pretrained
    torch.testing.assert_close(system.backbone.transformer.patch_embedding.weight, loaded.transformer.patch_embedding.weight)
    assert isinstance(base_system(cfg), ImageToVideo)  # experiments.generate's base model: the I2V base it is
