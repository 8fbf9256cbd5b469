"""UniAnimate-DiT and FramePrompt systems on fabricated batches with tiny random models."""

from pathlib import Path

import pytest
import torch

from animate.backbone import build_transformer, expand_patch_embedding
from animate.lora import merged_state_dict
from animate.methods.base import LatentSequence, video_pixels
from animate.methods.frameprompt import context_causal_mask
from animate.methods.text_to_video import TextToVideo
from animate.methods.unianimate import UniAnimate

from tiny_systems import ADAMW, ARCH, fake_batch, frameprompt, text_to_video, tiny_backbone, unianimate


@pytest.mark.parametrize("make", [unianimate, frameprompt, text_to_video])
def test_loss_backward_and_generate_shapes(make):
    system = make()
    batch = fake_batch()
    loss = system.loss(batch)
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in system.backbone.transformer.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    video = system.generate(batch)
    assert video.shape == batch["video"].shape and video.abs().max() <= 1


def test_generate_ignores_ground_truth_video():
    system = unianimate().eval()
    batch = fake_batch()
    a = system.generate(batch, seed=3)
    batch["video"] = torch.zeros_like(batch["video"])
    b = system.generate(batch, seed=3)
    torch.testing.assert_close(a, b)


def test_text_to_video_generates_every_frame_from_noise_with_no_conditions():
    system = text_to_video()
    batch = fake_batch()
    assert system.latent_inputs(training=False) == {} and system.conditions == ()
    seq = system.build_sequence(batch, system.encode(batch, system.latent_inputs(training=True)), {}, training=True)
    assert seq.generate.all() and seq.channel_cond is None and not seq.injections and seq.target == slice(0, seq.clean.shape[2])
    # generation reads nothing of the clip but its shape and key: another reference gives the same video
    video = system.generate(batch)
    other = dict(batch, reference=torch.zeros_like(batch["reference"]), video=torch.zeros_like(batch["video"]))
    assert torch.equal(system.generate(other), video)


def test_unianimate_pose_encoder_receives_gradient_after_first_step():
    system = unianimate()
    opt = system.configure_optimizers()
    batch = fake_batch()
    for _ in range(2):
        opt.zero_grad()
        system.loss(batch).backward()
        opt.step()
    first = system.pose_encoder.features[0].weight.grad
    assert first is not None and first.abs().sum() > 0


def test_unianimate_requires_i2v_channels():
    with pytest.raises(ValueError, match="in_channels = 36"):
        UniAnimate(tiny_backbone(16), ADAMW)


def test_unknown_dropout_condition_is_rejected():
    with pytest.raises(ValueError, match="valid"):
        UniAnimate(tiny_backbone(36), ADAMW, condition_dropout={"reference_pose": 0.1})


def test_frameprompt_sequence_roles_and_loss_frames():
    batch = fake_batch()
    for loss_frames in ("half", "all"):
        system = frameprompt(loss_frames=loss_frames)
        latents = system.encode(batch, system.latent_inputs(training=True))
        drops = system.level_drops(1, 2)
        seq = system.build_sequence(batch, latents, drops, training=True)
        # [reference (1) | pose (2) | target (2)] latent frames
        assert seq.clean.shape[2] == 5 and seq.target == slice(3, 5)
        assert seq.generate[0].tolist() == [False, False, False, True, True]
        per_frame = seq.loss_weight[0, 0, :, 0, 0].tolist()
        assert per_frame == ([0, 0, 0, 1, 1] if loss_frames == "half" else [1, 1, 1, 1, 1])
        torch.testing.assert_close(seq.clean[:, :, :1], latents["reference"])


def test_frameprompt_without_selective_noise_noises_context_in_training_only():
    system = frameprompt(selective_noise=False)
    batch = fake_batch()
    latents = system.encode(batch, system.latent_inputs(training=True))
    drops = system.level_drops(1, 2)
    assert system.build_sequence(batch, latents, drops, training=True).generate.all()
    latents = system.encode(batch, system.latent_inputs(training=False))
    assert not system.build_sequence(batch, latents, drops, training=False).generate[:, :3].any()


def test_causal_mask_semantics():
    is_target = torch.tensor([[False, True]])
    mask = context_causal_mask(is_target, tokens_per_frame=2)[0, 0]
    # rows = queries; context queries see context only; target queries see everything
    assert mask.tolist() == [[True, True, False, False], [True, True, False, False], [True] * 4, [True] * 4]


def test_frameprompt_causal_mask_keeps_context_blind_to_target():
    system = frameprompt(causal_mask=True).eval()
    batch = fake_batch(b=1)
    latents = system.encode(batch, system.latent_inputs(training=True))
    seq = system.build_sequence(batch, latents, system.level_drops(1, 1), training=True)
    t = torch.zeros(1, 5)
    out1 = system(seq, seq.clean, t)
    changed = seq.clean.clone()
    changed[:, :, 3:] += 1
    out2 = system(seq, changed, t)
    torch.testing.assert_close(out1[:, :, :3], out2[:, :, :3])
    assert not torch.allclose(out1[:, :, 3:], out2[:, :, 3:])


def test_cfg_levels_batched_in_one_forward():
    system = unianimate().eval()
    calls = []
    forward = system.backbone.forward
    system.backbone.forward = lambda packed: calls.append(packed.latents.shape[0]) or forward(packed)
    system.generate(fake_batch(), steps=2, guidance=[1.5])
    assert calls == [4, 4]  # unconditional + conditional, batch 2 each, one call per step
    calls.clear()
    system.generate(fake_batch(), steps=2, guidance=[1.0])
    assert calls == [2, 2]


def test_latent_sequence_cat_joins_injections():
    a = LatentSequence(torch.zeros(1, 2, 1, 2, 2), torch.ones(1, 1, dtype=torch.bool), torch.ones(1, 1, 1, 2, 2), slice(0, 1), injections={-1: torch.zeros(1, 1, 3)})
    joined = LatentSequence.cat([a, a])
    assert joined.clean.shape[0] == 2 and joined.injections[-1].shape[0] == 2


def test_lora_trains_only_adapters_and_checkpoints_are_small(tmp_path):
    system = unianimate(lora=dict(rank=4))
    trainable = system.trainable_keys()
    assert trainable and all("lora_" in k or "pose_encoder" in k for k in trainable)
    ckpt = {"state_dict": system.state_dict()}
    system.on_save_checkpoint(ckpt)
    assert set(ckpt["state_dict"]) == trainable
    merged = merged_state_dict(system.backbone.transformer)
    assert not any("lora_" in k or "base_layer" in k for k in merged)
    plain = build_transformer(**ARCH)
    expand_patch_embedding(plain, 36)
    assert set(merged) == set(plain.state_dict())


def test_lora_merge_matches_adapted_forward():
    system = unianimate(lora=dict(rank=4, alpha=8))
    for name, p in system.backbone.transformer.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1)
    plain = build_transformer(**ARCH)
    expand_patch_embedding(plain, 36)
    plain.load_state_dict(merged_state_dict(system.backbone.transformer))
    x = torch.randn(1, 36, 2, 4, 4)
    t = torch.tensor([500.0])
    ctx = torch.randn(1, 4, 16)
    with torch.no_grad():
        torch.testing.assert_close(system.backbone.transformer(x, t, ctx).sample, plain(x, t, ctx).sample, rtol=1e-4, atol=1e-5)


def test_latent_cache_hits_on_second_encode(tmp_path):
    system = UniAnimate(tiny_backbone(36), ADAMW, latent_cache=str(tmp_path))
    batch = fake_batch()
    first = system.encode(batch, {"video": video_pixels})
    second = system.encode(batch, {"video": video_pixels})
    torch.testing.assert_close(first["video"], second["video"])
    assert system.latent_cache.misses == 2 and system.latent_cache.hits == 2


def unianimate_reference(mode: str) -> tuple[UniAnimate, dict, dict, torch.Tensor]:
    """(system, batch, training latents, reference latents) of UniAnimate with ``reference_latent=mode``; the reference has the target's shape."""
    system = UniAnimate(tiny_backbone(36), ADAMW, reference_latent=mode)
    batch = fake_batch()
    latents = system.encode(batch, system.latent_inputs(training=True))
    reference = system.reference_latents(batch, latents)
    assert reference.shape == latents["video"].shape
    return system, batch, latents, reference


def test_unianimate_frame0_reference_latent_encodes_one_frame():
    system, _, latents, reference = unianimate_reference("frame0")
    assert list(system.latent_inputs(training=False)) == ["reference"]
    torch.testing.assert_close(reference[:, :, :1], latents["reference"])
    assert torch.all(reference[:, :, 1:] == 0)
    with pytest.raises(ValueError, match="reference_latent"):
        UniAnimate(tiny_backbone(36), ADAMW, reference_latent="clip")


def test_unianimate_repeat_reference_latent_fills_every_frame():
    _, _, latents, reference = unianimate_reference("repeat")
    for frame in range(reference.shape[2]):
        torch.testing.assert_close(reference[:, :, frame], latents["reference"][:, :, 0])


def test_unianimate_still_reference_latent_is_the_held_reference_encoded_as_a_clip():
    system, batch, _, reference = unianimate_reference("still")
    assert list(system.latent_inputs(training=False)) == ["reference_still"]
    held = batch["reference"][:, :, None].expand_as(batch["video"])
    torch.testing.assert_close(reference, system.backbone.vae.encode(held))
    # latent frame 0 encodes the reference alone, as the one-frame "repeat" latent does
    torch.testing.assert_close(reference[:, :, :1], system.backbone.vae.encode(batch["reference"][:, :, None]))


def test_pretrained_weights_train_at_their_own_learning_rate_and_new_ones_at_the_full_rate(tmp_path):
    from animate.backbone import WanBackbone, load_backbone

    from tiny_systems import tiny_vae

    torch.manual_seed(0)
    build_transformer(**ARCH).save_pretrained(tmp_path / "base")
    loaded = load_backbone(transformer={"path": str(tmp_path / "base"), "in_channels": 36}, text={"length": 4})
    assert "blocks.0.attn1.to_q.weight" in loaded.pretrained and "patch_embedding.bias" in loaded.pretrained
    assert "patch_embedding.weight" not in loaded.pretrained  # widened: its reference channels are new
    backbone = WanBackbone(loaded.transformer, tiny_vae(), torch.randn(1, 4, 16), pretrained=loaded.pretrained)
    system = UniAnimate(backbone, ADAMW, pretrained_lr_scale=0.1)
    optimizer = system.configure_optimizers()
    lr_of = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    assert lr_of[id(system.backbone.transformer.blocks[0].attn1.to_q.weight)] == pytest.approx(1e-4)
    assert lr_of[id(system.backbone.transformer.patch_embedding.weight)] == pytest.approx(1e-3)
    assert all(lr_of[id(p)] == pytest.approx(1e-3) for p in system.pose_encoder.parameters())
    assert len(lr_of) == sum(p.requires_grad for p in system.parameters())
    random_init = unianimate(pretrained_lr_scale=0.1).configure_optimizers()  # nothing pretrained: one rate
    assert [group["lr"] for group in random_init.param_groups] == [1e-3]
    with pytest.raises(ValueError, match="pretrained_lr_scale=0"):
        unianimate(pretrained_lr_scale=0)


def test_constructor_defaults_are_the_method_base_configs():
    from omegaconf import OmegaConf

    base = OmegaConf.load(Path(__file__).parents[1] / "conf" / "method_base" / "default.yaml")
    system = TextToVideo(tiny_backbone(16), ADAMW)  # no sampler, no time_sampling given
    assert system.sampler == OmegaConf.to_container(base.sampler)
    assert system.time_sampling | {"loss_weighting": system.loss_weighting} == OmegaConf.to_container(base.time_sampling)
    # a partial sampler takes the rest from the same defaults
    assert text_to_video().sampler == OmegaConf.to_container(base.sampler) | {"steps": 2, "guidance": []}


def test_an_unknown_sampling_schedule_is_refused_when_the_system_is_built():
    with pytest.raises(ValueError, match="sampler.schedule='euler'"):
        TextToVideo(tiny_backbone(16), ADAMW, sampler={"schedule": "euler"})


def method_yaml(name: str) -> dict:
    """conf/method/NAME.yaml's ``method`` node as plain values."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(Path(__file__).parents[1] / "conf" / "method" / f"{name}.yaml"))["method"]


@pytest.mark.parametrize("name", ["unianimate", "frameprompt", "onetoall", "everanimate"])
def test_every_constructor_default_is_its_methods_config(name):
    import inspect

    from hydra.utils import get_class

    from animate.methods import everanimate, onetoall, unianimate

    method = method_yaml(name)
    cls = get_class(method["_target_"])
    for key, parameter in inspect.signature(cls.__init__).parameters.items():
        if key in method and parameter.default not in (inspect.Parameter.empty, None):
            default = list(parameter.default) if isinstance(parameter.default, tuple) else parameter.default
            assert default == method[key], (name, key)
    merged = {  # the defaults a constructor merges a partial dict into
        "unianimate": {"pose_encoder": unianimate.POSE_ENCODER_DEFAULTS},
        "onetoall": {"pose_control": onetoall.POSE_CONTROL_DEFAULTS, "outpainting": onetoall.OUTPAINTING_DEFAULTS,
                     "token_replace": onetoall.TOKEN_REPLACE_DEFAULTS, "reference_noise": onetoall.REFERENCE_NOISE_DEFAULTS,
                     "condition_dropout": onetoall.CONDITION_DROPOUT_DEFAULTS},
        "everanimate": {"memory_augmentation": everanimate.MEMORY_AUGMENTATION_DEFAULTS, "restorative": everanimate.RESTORATIVE_DEFAULTS},
        "frameprompt": {},
    }[name]
    for key, defaults in merged.items():
        assert defaults == method[key], (name, key)
