"""The shared loop's contracts: per-level conditioning under CFG, the flow pair a method owns, and
the share of training samples that realise each CFG level."""

from dataclasses import dataclass

import pytest
import torch
from torch import nn

from animate.backbone import PackedInput
from animate.flow import guided_velocity
from animate.methods.base import FlowPair, LatentSequence, first_frame_mask
from animate.methods.frameprompt import FramePrompt
from animate.modules.hrfa import install_hrfa

from tiny_systems import ADAMW, fake_batch, frameprompt, tiny_backbone, unianimate


def random_x_t(seq: LatentSequence, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Latents and per-frame times (generated frames at random t, held frames at 0)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(seq.clean.shape, generator=g)
    t = seq.frame_times(torch.rand(seq.clean.shape[0], generator=g))
    return x, t


def guided(system, batch, scale: float, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The guided velocity generate() integrates, for one guidance scale."""
    sequences = system.sampling_sequences(batch, [0, 1])
    return guided_velocity(system.level_velocity(sequences), x, t, [scale])


@torch.no_grad()
def test_frameprompt_unconditional_pass_sees_no_reference_and_no_pose():
    system = frameprompt().eval()
    batch = fake_batch()
    latents = system.encode(batch, system.latent_inputs(training=False))
    top = system.sampling_sequences(batch, [1])[1]
    x, t = random_x_t(top)
    n_context = top.target.start
    conditioned = x.clone()
    conditioned[:, :, :n_context] = torch.cat([latents["reference"], latents["pose"]], dim=2)
    unconditioned = x.clone()
    unconditioned[:, :, :n_context] = 0  # every condition of level 0 removed, condition frames included
    v1 = system.backbone(PackedInput(conditioned, t))
    v0 = system.backbone(PackedInput(unconditioned, t))
    for scale in (1.0, 3.0):
        torch.testing.assert_close(guided(system, batch, scale, x, t), v0 + scale * (v1 - v0), rtol=1e-4, atol=1e-5)


@torch.no_grad()
def test_unianimate_negative_pass_drops_the_pose_and_keeps_the_reference():
    system = unianimate().eval()
    batch = fake_batch()
    latents = system.encode(batch, system.latent_inputs(training=False))
    reference = system.reference_latents(batch, latents)
    b, _, f, h, w = reference.shape
    top = system.sampling_sequences(batch, [1])[1]
    x, t = random_x_t(top)
    y = torch.cat([first_frame_mask(b, f, h, w), reference], dim=1)
    pose_tokens = system.pose_encoder((batch["pose"] + 1) / 2)
    reference_pose = system.reference_pose_encoder((batch["reference_pose"] + 1) / 2)
    v1 = system.backbone(PackedInput(x, t, channel_cond=y + reference_pose, injections={-1: pose_tokens}))
    v0 = system.backbone(PackedInput(x, t, channel_cond=y))
    torch.testing.assert_close(guided(system, batch, 1.5, x, t), v0 + 1.5 * (v1 - v0), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("make", [unianimate, frameprompt])
def test_guidance_changes_the_generated_video(make):
    system = make().eval()
    for module in system.modules():  # zero-initialised pose projections would hide the pose's effect
        if isinstance(module, (nn.Conv2d, nn.Conv3d)) and module.weight.abs().sum() == 0:
            nn.init.normal_(module.weight, std=0.5)
    batch = fake_batch()
    plain = system.generate(batch, guidance=[1.0], seed=1)
    strong = system.generate(batch, guidance=[3.0], seed=1)
    assert (plain - strong).abs().max() > 1e-3


def level_of(system, drops: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B,) the CFG level each sample's drops realise, -1 where they realise none."""
    levels = torch.full((len(next(iter(drops.values()))),), -1, dtype=torch.long)
    for level in range(len(system.guidance_levels)):
        match = torch.stack([drops[n] == want for n, want in system.level_drops(level, len(levels)).items()]).all(0)
        levels = torch.where(match & (levels < 0), level, levels)
    return levels


@pytest.mark.parametrize(
    "make, dropout",
    [(unianimate, {"pose": 0.05, "reference": 0.1}), (frameprompt, {"pose": 0.2, "reference": 0.3})],
)
def test_training_realises_each_cfg_level_as_configured(make, dropout):
    system = make(condition_dropout=dropout)
    torch.manual_seed(0)
    n = 200_000
    levels = level_of(system, system.sample_drops(n))
    for level, active in enumerate(system.guidance_levels):
        expected = 1.0
        for name, p in dropout.items():
            expected *= (1 - p) if name in active else p
        share = (levels == level).float().mean().item()
        assert abs(share - expected) < 4 * (expected * (1 - expected) / n) ** 0.5 + 1e-4, (level, share, expected)


class ReferenceAttentionFramePrompt(FramePrompt):
    """FramePrompt whose blocks run HRFA processors: per-sample reference states travel in ``attention_kwargs``."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for processor in install_hrfa(self.backbone.transformer):
            nn.init.normal_(processor.to_v_ref.weight)


@torch.no_grad()
def test_attention_kwargs_follow_each_cfg_level_in_a_batched_forward():
    system = ReferenceAttentionFramePrompt(tiny_backbone(16), ADAMW).eval()
    batch = fake_batch()
    latents = system.encode(batch, system.latent_inputs(training=False))
    dim, blocks = system.backbone.dim, system.backbone.num_blocks
    sequences = []
    for level, seed in zip([0, 1, 1], [1, 2, 3]):  # three passes (cumulative CFG), each with its own reference states
        seq = system.build_sequence(batch, latents, system.level_drops(level, 2), training=False)
        seq.attention_kwargs = {"reference_states": torch.randn(2, blocks, 4, dim, generator=torch.Generator().manual_seed(seed))}
        sequences.append(seq)
    x, t = random_x_t(sequences[0])
    separate = torch.cat([system(seq, system.hold(x, seq), t) for seq in sequences])
    batched = system(LatentSequence.cat(sequences), torch.cat([system.hold(x, s) for s in sequences]), t.repeat(3, 1))
    torch.testing.assert_close(batched, separate, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(separate[2:4], separate[4:6])  # the processors really read their input


def test_cat_refuses_sequences_that_are_not_batch_shaped():
    a = LatentSequence(torch.zeros(1, 2, 1, 2, 2), torch.ones(1, 1, dtype=torch.bool), torch.ones(1, 1, 1, 2, 2), slice(0, 1))
    b = LatentSequence(torch.zeros(1, 2, 1, 2, 2), torch.ones(1, 1, dtype=torch.bool), torch.ones(1, 1, 1, 2, 2), slice(0, 1), attention_kwargs={"reference_states": torch.zeros(1, 3)})
    with pytest.raises(ValueError, match="attention_kwargs"):
        LatentSequence.cat([a, b])
    c = LatentSequence(a.clean, a.generate, a.loss_weight, slice(1, 2))
    with pytest.raises(ValueError, match="target"):
        LatentSequence.cat([a, c])


class ConstantTargetPrompt(FramePrompt):
    """Overrides the flow pair: regress a constant on the last frame only."""

    def flow_pair(self, seq, noise, t):
        pair = super().flow_pair(seq, noise, t)
        weight = torch.zeros_like(pair.weight)
        weight[:, :, -1] = 1
        return FlowPair(pair.model_input, pair.t, torch.full_like(pair.target, 0.5), weight)


def test_loss_trains_on_the_flow_pair_a_method_returns():
    system = ConstantTargetPrompt(tiny_backbone(16), ADAMW)
    batch = fake_batch()
    g = torch.Generator().manual_seed(5)
    loss = system.loss(batch, generator=g)
    g = torch.Generator().manual_seed(5)
    latents = system.encode(batch, system.latent_inputs(training=True))
    seq = system.build_sequence(batch, latents, system.level_drops(1, 2), training=True)
    from animate.flow import sample_time

    t = sample_time(2, **system.time_sampling, generator=g)
    noise = torch.randn(seq.clean.shape, generator=g)
    pair = system.flow_pair(seq, noise, t)
    v = system(seq, pair.model_input, pair.t)
    torch.testing.assert_close(loss, (v[:, :, -1] - 0.5).pow(2).mean())


class FirstFrameReplaced(FramePrompt):
    """Overrides the sampling rule: the first target frame is overwritten at every step (token replace)."""

    def hold(self, x, seq):
        x = super().hold(x, seq).clone()
        x[:, :, seq.target.start] = 0.25
        return x


@torch.no_grad()
def test_generate_applies_the_hold_rule_a_method_defines():
    system = FirstFrameReplaced(tiny_backbone(16), ADAMW, sampler=dict(steps=3)).eval()
    seen = []
    forward = system.backbone.forward
    system.backbone.forward = lambda packed: seen.append(packed.latents.clone()) or forward(packed)
    system.generate(fake_batch())
    first_target = 3  # [reference | 2 pose | 2 target] latent frames
    assert len(seen) == 3 and all(torch.all(x[:, :, first_target] == 0.25) for x in seen)


@dataclass
class RestorativeSequence(LatentSequence):
    """A method's own per-sample field (EverAnimate's perturbed target, say)."""

    perturbed: torch.Tensor | None = None


def test_a_sequence_subclass_keeps_its_type_and_batches_its_fields():
    def sequence(value):
        return RestorativeSequence(torch.full((1, 2, 1, 2, 2), value), torch.ones(1, 1, dtype=torch.bool), torch.ones(1, 1, 1, 2, 2), slice(0, 1),
                                   perturbed=torch.full((1, 2, 1, 2, 2), -value))

    joined = LatentSequence.cat([sequence(1.0), sequence(2.0)])
    assert type(joined) is RestorativeSequence
    assert joined.perturbed[:, 0, 0, 0, 0].tolist() == [-1.0, -2.0] and joined.clean[:, 0, 0, 0, 0].tolist() == [1.0, 2.0]
