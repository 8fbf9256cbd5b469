"""The base recipes: per-frame noise levels in T2V pretraining (conf=base) and the tiny I2V base (conf=base_i2v)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from animate.methods.text_to_video import HELD_FRAMES, OWN_TIMES, TextToVideo, draw_frame_noise

from tiny_systems import ADAMW, fake_batch, text_to_video, tiny_backbone

ROOT = Path(__file__).resolve().parent.parent
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
    from common.cli import compose_config

    method = OmegaConf.load(ROOT / "conf" / "method" / "text_to_video.yaml")["method"]
    assert OmegaConf.to_container(method.frame_noise) == FRAME_NOISE_DEFAULTS
    recipe = compose_config("base").method.frame_noise
    assert recipe.independent + recipe.clean < 1 and recipe.clean_frames == "prefix"


# ----- the recipes as a user runs them ---------------------------------------------------------------
def fit(args: list[str]) -> subprocess.CompletedProcess:
    """``python -m experiments.fit ARGS`` from the repository root."""
    return subprocess.run([sys.executable, "-m", "experiments.fit", *args], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("conf", ["base"])
def test_the_base_recipes_run_one_fast_dev_step(conf, workdir, smoke_overrides):
    run = workdir / f"run_{conf}"
    result = fit([f"conf={conf}", *smoke_overrides(workdir), "trainer.fast_dev_run=true", f"hydra.run.dir={run}"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert (run / "last.ckpt").exists() and "`Trainer.fit` stopped: `max_steps=1` reached." in result.stderr + result.stdout
