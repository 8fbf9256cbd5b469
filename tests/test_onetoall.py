"""One-to-All Animation: the Reference Extractor's block map, HRFA's RoPE at frame 0, zero-initialised identity with the
base, cumulative CFG in one batched forward, token replace, outpainting masks, face enhancement and the training stages."""

from pathlib import Path

import numpy as np
import pytest
import torch

from animate.backbone import PackedInput, WanBackbone, build_transformer
from animate.flow import guided_velocity, sampling_times
from animate.methods.base import LatentSequence
from animate.methods.onetoall import OneToAll, in_group
from animate.modules.hrfa import HybridReferenceAttnProcessor, frame0_rope
from animate.modules.pose_control import DrivingPoseControl
from animate.modules.reference_extractor import feature_of_block
from animate.rollout import roll_out, rollout_config
from common.pose.augment import HEAD_POINTS, enhance_face, outpainting_mask
from experiments.training import load_initial_weights

from tiny_systems import ADAMW, ARCH, fake_batch, onetoall, tiny_backbone, tiny_vae

CONF = str(Path(__file__).resolve().parent.parent / "conf")


def full_sequence(system, batch, training=True):
    """The fully conditioned training-layout sequence of a batch (no augmentation, no token replace)."""
    batch = system.prepare_batch(batch, augment=False)
    latents = system.encode(batch, system.latent_inputs(training=training))
    return system.build_sequence(batch, latents, system.level_drops(len(system.guidance_levels) - 1, batch["reference"].shape[0]), training=training)


def test_extractor_features_map_to_blocks_as_the_paper_shares_them():
    assert feature_of_block(30, 15) == [i // 2 for i in range(30)]  # 1.3B: N = 30, M = 14, n = 2
    assert feature_of_block(40, 8) == [i // 5 for i in range(40)]  # 14B: N = 40, M = 7, n = 5
    with pytest.raises(ValueError, match="must divide"):
        feature_of_block(30, 4)


@torch.no_grad()
def test_each_block_reads_its_features_projection():
    system = onetoall(extractor_blocks=1).eval()
    extractor = system.reference_extractor
    for projection in extractor.projections:
        torch.nn.init.eye_(projection.weight)
    reference = torch.randn(2, 32, 1, 16, 16)
    rope = system.backbone.rotary(torch.zeros(2, 1, dtype=torch.long), 8, 8)
    features, states = extractor.features(reference, rope), extractor(reference, rope)
    assert states.shape == (2, 2, 64, system.backbone.dim) and len(features) == 2  # M + 1 = 2 features
    for index, feature in enumerate(features):
        torch.testing.assert_close(states[:, index], feature)
    readers = [block.attn1.processor.feature_index for block in system.backbone.transformer.blocks]
    assert readers == extractor.feature_of_block == [0, 1]  # N = 2 blocks, n = 1


def test_every_block_of_a_deeper_backbone_reads_the_shared_feature():
    backbone = WanBackbone(build_transformer(**(ARCH | {"num_layers": 6})), tiny_vae(), torch.randn(1, 4, 16))
    system = OneToAll(backbone, ADAMW, extractor_blocks=2, pose_control=dict(enabled=False))
    assert [b.attn1.processor.feature_index for b in system.backbone.transformer.blocks] == [0, 0, 1, 1, 2, 2]
    assert len(system.reference_extractor.projections) == 3


@torch.no_grad()
def test_at_initialisation_the_velocity_is_the_base_backbones():
    system = onetoall().eval()
    base = tiny_backbone(16).eval()
    seq = full_sequence(system, fake_batch())
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(seq.clean.shape, generator=g), torch.rand(seq.clean.shape[0], seq.clean.shape[2], generator=g)
    torch.testing.assert_close(system(seq, x, t), base(PackedInput(x, t, frame_ids=seq.frame_ids)), rtol=1e-5, atol=1e-6)
    for projection in system.reference_extractor.projections:  # the reference really enters once its projections move
        torch.nn.init.normal_(projection.weight)
    assert not torch.allclose(system(full_sequence(system, fake_batch()), x, t), base(PackedInput(x, t, frame_ids=seq.frame_ids)))


def test_frame0_rope_leaves_the_time_channels_unrotated():
    cos, sin = torch.randn(1, 6, 1, 12), torch.randn(1, 6, 1, 12)
    cos0, sin0 = frame0_rope((cos, sin), time_channels=4)
    assert torch.all(cos0[..., :4] == 1) and torch.all(sin0[..., :4] == 0)
    assert torch.equal(cos0[..., 4:], cos[..., 4:]) and torch.equal(sin0[..., 4:], sin[..., 4:])


@pytest.mark.parametrize("query_rope, frame_blind", [("frame0", True), ("full", False)])
@torch.no_grad()
def test_hrfa_queries_and_keys_sit_at_frame_0(query_rope, frame_blind):
    system = onetoall(query_rope=query_rope).eval()
    block = system.backbone.transformer.blocks[0]
    processor = block.attn1.processor
    assert isinstance(processor, HybridReferenceAttnProcessor) and processor.query_rope == query_rope
    torch.nn.init.normal_(processor.to_v_ref.weight)
    frame = torch.randn(1, 4, system.backbone.dim)  # one frame of 2 x 2 tokens, repeated over 3 frames
    hidden = frame.repeat(1, 3, 1)
    rope = system.backbone.rotary(torch.arange(3)[None], 2, 2)
    reference = torch.randn(1, 2, 4, system.backbone.dim)
    query = block.attn1.norm_q(block.attn1.to_q(hidden)).unflatten(2, (block.attn1.heads, -1))
    out = processor.reference_attention(block.attn1, query, reference[:, 0], rope)  # (1, 12, D)
    same = torch.allclose(out[:, :4], out[:, 8:], atol=1e-5)
    assert same == frame_blind  # f = 0: the reference branch cannot tell frame 2 from frame 0


@torch.no_grad()
def test_cumulative_cfg_levels_batched_equal_separate_forwards():
    system = onetoall().eval()
    for projection in system.reference_extractor.projections:
        torch.nn.init.normal_(projection.weight, std=0.1)
    torch.nn.init.normal_(system.pose_control.proj_out.weight, std=0.1)
    batch = fake_batch()
    sequences = system.sampling_sequences(batch, [0, 1, 2])
    x = torch.randn(sequences[2].clean.shape, generator=torch.Generator().manual_seed(0))
    t = sequences[2].frame_times(torch.full((2,), 0.7))
    separate = [system(sequences[level], system.hold(x, sequences[level]), t) for level in (0, 1, 2)]
    batched = system.level_velocity(sequences)(x, t, [0, 1, 2]).split(2)
    for one, other in zip(separate, batched):
        torch.testing.assert_close(one, other, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(separate[0], separate[1]) and not torch.allclose(separate[1], separate[2])  # each level its own conditions
    lp, li = 1.5, 2.5
    expected = separate[0] + lp * (separate[1] - separate[0]) + li * (separate[2] - separate[1])  # Eq. 16
    torch.testing.assert_close(guided_velocity(system.level_velocity(sequences), x, t, [lp, li]), expected, rtol=1e-4, atol=1e-5)


def test_token_replace_in_training_holds_the_first_latent_frames_clean_and_out_of_the_loss():
    system = onetoall(token_replace=dict(probability=1.0))
    batch = system.prepare_batch(fake_batch(t=9), augment=False)
    latents = system.encode(batch, system.latent_inputs(training=True))
    seq = system.build_sequence(batch, latents, system.level_drops(2, 2), training=True)
    assert seq.target == slice(1, 4)  # [reference | 3 target latent frames]
    assert not seq.generate[:, :3].any() and seq.generate[:, 3].all()
    assert (seq.loss_weight[:, :, :3] == 0).all() and (seq.loss_weight[:, :, 3] > 0).all()
    torch.testing.assert_close(seq.clean[:, :, 1:3], latents["video"][:, :, :2])


@torch.no_grad()
def test_token_replace_keeps_the_context_frames_at_every_step():
    system = onetoall().eval()
    batch = {k: v for k, v in fake_batch().items() if k != "video"}
    batch["pose"] = torch.rand(2, 3, 21, 32, 32) * 2 - 1
    steps, seen = [], []
    forward = system.forward

    def recording(seq, x, t):
        steps.append((x[:, :, 1:3].clone(), t[:, 1:3].clone(), seq.clean[:, :, 1:3].clone(), seq.generate[:, 1:3].clone()))
        return forward(seq, x, t)

    system.forward = recording
    encode = system.backbone.vae.encode

    def recording_encode(video):
        latents = encode(video)
        seen.append((video.shape[2], latents))
        return latents

    system.backbone.vae.encode = recording_encode
    video = roll_out(system, batch, rollout_config(system, {"chunk_frames": 13}), progress=False)
    assert video.shape == (2, 3, 21, 32, 32)
    contexts = [latents for frames, latents in seen if frames == 5]  # the previous segment's last 5 frames -> 2 latent frames
    assert len(contexts) == 1 and contexts[0].shape[2] == 2
    second_segment = steps[2:]  # 2 steps per segment, CFG levels batched
    assert len(second_segment) == 2
    for x, t, clean, generate in second_segment:
        context = contexts[0].repeat(x.shape[0] // 2, 1, 1, 1, 1)
        torch.testing.assert_close(x, context)  # the noisy latent's first 2 target frames are the context ...
        torch.testing.assert_close(clean, context)
        assert torch.all(t == 0) and not generate.any()  # ... at t = 0


def test_independent_segments_share_no_frames():
    system = onetoall().eval()
    batch = {k: v for k, v in fake_batch().items() if k != "video"}
    batch["pose"] = torch.rand(2, 3, 11, 32, 32) * 2 - 1
    independent = rollout_config(system, {"chunk_frames": 5, "strategy": "independent"})
    assert roll_out(system, batch, independent, progress=False).shape == (2, 3, 11, 32, 32)
    with pytest.raises(ValueError, match="frames carried"):
        roll_out(system, batch, rollout_config(system, {"chunk_frames": 5}), progress=False)


def test_outpainting_mask_keeps_the_head_and_masks_around_it():
    keypoints = fake_batch()["reference_keypoints"][0].numpy().astype(np.float64)
    rng = np.random.default_rng(0)
    masks = [outpainting_mask(keypoints, 32, 32, rng, (1.0, 3.0), (1.0, 2.0)) for _ in range(20)]
    head = keypoints[HEAD_POINTS]
    for mask in masks:
        assert mask.shape == (32, 32) and mask.any() and not mask.all()
        assert not mask[int(head[:, 1].mean()), int(head[:, 0].mean())]  # the face centre is kept
    assert len({m.sum() for m in masks}) > 1  # random sizes
    assert outpainting_mask(np.zeros((133, 3)), 32, 32, rng) is None  # no face: the caller keeps the whole reference


def test_training_references_are_masked_and_a_missing_face_is_counted():
    system = onetoall(outpainting=dict(probability=1.0))
    batch = fake_batch()
    batch["reference_keypoints"][1] = 0  # no face found in the second reference
    prepared = system.prepare_batch(batch, augment=True)
    assert prepared["reference_mask"][0].any() and not prepared["reference_mask"][1].any()
    assert system.outpainting_without_face == 1
    assert not system.prepare_batch(batch, augment=False)["reference_mask"].any()  # validation and sampling: the whole reference
    del batch["reference_keypoints"]
    with pytest.raises(ValueError, match="reference_keypoints"):
        system.prepare_batch(batch, augment=True)


def test_face_enhancement_moves_face_points_only():
    rng = np.random.default_rng(0)
    driving = np.zeros((4, 133, 3))
    driving[..., :2] = rng.uniform(20, 100, size=(4, 133, 2))
    driving[..., 2] = 1.0
    donor = driving[0].copy()
    donor[HEAD_POINTS, :2] = donor[0, :2] + rng.normal(0, 8, size=(len(HEAD_POINTS), 2))  # another face around the nose
    enhanced, changed = enhance_face(driving, donor)
    others = np.setdiff1d(np.arange(133), HEAD_POINTS)
    assert changed and np.array_equal(enhanced[:, others], driving[:, others]) and np.array_equal(enhanced[..., 2], driving[..., 2])
    assert not np.allclose(enhanced[:, HEAD_POINTS], driving[:, HEAD_POINTS])
    motion = np.diff(enhanced[:, HEAD_POINTS, :2], axis=0)  # each frame's face moves as the driving face did
    np.testing.assert_allclose(motion, np.diff(driving[:, HEAD_POINTS, :2], axis=0), atol=1e-9)
    no_nose = donor.copy()
    no_nose[0, 2] = 0
    assert enhance_face(driving, no_nose)[1] is False


def test_stage_groups_freeze_the_rest():
    system = onetoall(trainable=["reference_extractor", "reference_kv"], pose_control=dict(enabled=False))
    trainable = {name for name, p in system.named_parameters() if p.requires_grad}
    assert trainable and all(in_group(n, "reference_extractor") or in_group(n, "reference_kv") for n in trainable)
    assert any(".attn1.processor.to_k_ref" in n for n in trainable) and not any(n.startswith("backbone.transformer.") and ".attn1.to_q" in n for n in trainable)
    assert system.pose_control is None
    with pytest.raises(ValueError, match="unknown groups"):
        onetoall(trainable=["everything"])
    with pytest.raises(ValueError, match="LoRA"):
        OneToAll(tiny_backbone(16), ADAMW, extractor_blocks=1, trainable=["backbone"], lora=dict(rank=4))


def test_init_from_loads_an_earlier_stage_and_refuses_another_method(tmp_path):
    stage1 = onetoall(trainable=["reference_extractor", "reference_kv"], pose_control=dict(enabled=False))
    with torch.no_grad():
        for p in stage1.reference_extractor.parameters():
            p.add_(1.0)
    state = {k: v for k, v in stage1.state_dict().items() if k in stage1.trainable_keys()}
    torch.save({"state_dict": state}, tmp_path / "last.ckpt")
    stage2 = onetoall()
    load_initial_weights(stage2, str(tmp_path))
    torch.testing.assert_close(stage2.reference_extractor.patch_embedding.weight, stage1.reference_extractor.patch_embedding.weight)
    assert stage2.initialised_keys == frozenset(state)
    checkpoint = {"state_dict": stage2.state_dict()}
    stage2.on_save_checkpoint(checkpoint)
    assert set(state) <= set(checkpoint["state_dict"])  # kept even if this stage froze them
    torch.save({"state_dict": {"pose_encoder.proj_out.weight": torch.zeros(1)}}, tmp_path / "other.ckpt")
    with pytest.raises(SystemExit):  # a one-line usage error
        load_initial_weights(stage2, str(tmp_path / "other.ckpt"))


def test_train_step_reaches_every_new_module():
    system = onetoall()
    for projection in system.reference_extractor.projections:  # off zero, so gradients reach the extractor's blocks
        torch.nn.init.normal_(projection.weight, std=0.1)
    torch.nn.init.normal_(system.pose_control.proj_out.weight, std=0.1)
    system.loss(fake_batch()).backward()
    for name in ("reference_extractor.blocks.0.modulation", "reference_extractor.patch_embedding.weight",
                 "backbone.transformer.blocks.1.attn1.processor.to_v_ref.weight", "pose_control.encoder.layers.0.weight",
                 "pose_control.attention.block.attn1.to_q.weight"):
        grad = dict(system.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_table3_base_rows_add_the_driving_poses_to_the_noisy_tokens():
    system = onetoall(pose_control=dict(style="driving", channels=4, blocks_per_stage=1))
    assert isinstance(system.pose_control, DrivingPoseControl) and not hasattr(system.pose_control, "attention")
    torch.nn.init.normal_(system.pose_control.proj_out.weight, std=0.1)
    batch = fake_batch()
    seq = full_sequence(system, batch)
    tokens_per_frame = seq.clean.shape[-2] * seq.clean.shape[-1] // 4  # 2 x 2 patches
    injected = seq.injections[-1]  # before block 0: the noisy latent's tokens
    assert list(seq.injections) == [-1] and injected.shape[1] == seq.clean.shape[2] * tokens_per_frame
    assert injected[:, : seq.prefix_frames * tokens_per_frame].abs().sum() == 0 and injected.abs().sum() > 0  # the frame in front gets none
    other = full_sequence(system, batch | {"pose": batch["pose"].flip(-1)})
    assert not torch.allclose(other.injections[-1], injected)  # the driving poses, and so face enhancement, reach the model
    system.loss(fake_batch()).backward()
    assert system.pose_control.encoder.layers[0].weight.grad.abs().sum() > 0


def test_latent_sequence_cat_joins_the_reference_states():
    system = onetoall().eval()
    sequences = system.sampling_sequences(fake_batch(), [1, 2])
    joined = LatentSequence.cat([sequences[1], sequences[2]])
    assert joined.attention_kwargs["reference_states"].shape[0] == 4
    assert torch.all(joined.attention_kwargs["reference_states"][:2] == 0)  # level 1 (pose only) drops the reference


@pytest.mark.parametrize("guidance, passes", [([1.0, 1.0], 1), ([1.5, 1.5], 2), ([1.5, 2.5], 3)])
def test_cumulative_cfg_runs_one_two_or_three_passes_per_step(guidance, passes):
    from benchmarks.guidance_cost import measure

    result = measure(onetoall().eval(), fake_batch(), guidance, steps=2)
    assert result["passes_per_step"] == passes and result["forward_calls_per_step"] == 1  # the levels share one batched forward


OFFICIAL_FORM = dict(extractor_timestep=True, reference_prefix="encoded", prefix_time="noisy",
                     pose_control=dict(style="controlnet", blocks=1, channels=4))


def test_official_layout_checkpoint_round_trip(tmp_path):
    from safetensors.torch import save_file

    from animate.weights import official_one_to_all_key

    source = onetoall(**OFFICIAL_FORM)
    g = torch.Generator().manual_seed(3)
    official = {}
    for name, tensor in source.state_dict().items():
        key = official_one_to_all_key(name)
        if key is not None:
            official[key] = torch.randn(tensor.shape, generator=g)
    assert {"blocks.0.attn1.add_k_proj.weight", "blocks.1.attn1.norm_added_k.weight", "refextractor.ref_blocks.1.weight",
            "refextractor.blocks.0.attn1.to_q.weight", "refextractor.condition_embedder.time_proj.weight", "refextractor.patch_embedding.weight",
            "image_to_cond.down_blocks.2.resnets.0.conv2.weight", "image_to_cond.conv_out.bias",
            "input_hint_block.down_blocks.3.downsamplers.0.conv.conv.weight", "input_hint_block.conv_out.conv.weight",
            "controlnet.blocks.0.attn1.to_k.weight", "controlnet_zero.0.weight", "patch_embedding.weight",
            "condition_embedder.text_embedder.linear_1.weight"} <= set(official)
    keys = sorted(official)
    save_file({k: official[k].contiguous() for k in keys[: len(keys) // 2]}, str(tmp_path / "diffusion_pytorch_model-00001-of-00002.safetensors"))
    save_file({k: official[k].contiguous() for k in keys[len(keys) // 2 :]}, str(tmp_path / "diffusion_pytorch_model-00002-of-00002.safetensors"))
    loaded = onetoall(**OFFICIAL_FORM, official_checkpoint=str(tmp_path))
    state = loaded.state_dict()
    for key, tensor in official.items():
        mapped = next(name for name in state if official_one_to_all_key(name) == key)
        torch.testing.assert_close(state[mapped], tensor, msg=key)
    with pytest.raises(ValueError, match="official form"):
        onetoall(official_checkpoint=str(tmp_path))  # the paper's form lacks the official modules


@torch.no_grad()
def test_official_form_starts_as_the_base_and_runs_every_cfg_level():
    system = onetoall(**OFFICIAL_FORM).eval()
    base = tiny_backbone(16).eval()
    seq = full_sequence(system, fake_batch())
    assert seq.reference_input is not None and seq.pose_tokens is not None and seq.prefix_frames == 1
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(seq.clean.shape, generator=g), seq.frame_times(torch.rand(2, generator=g))
    prefix_at_t = torch.cat([t.amax(1, keepdim=True), t[:, 1:]], dim=1)  # the official form modulates the prefix with the noisy t
    torch.testing.assert_close(system(seq, x, t), base(PackedInput(x, prefix_at_t, frame_ids=seq.frame_ids)), rtol=1e-5, atol=1e-6)
    torch.nn.init.normal_(system.pose_control.zero[0].weight, std=0.1)
    torch.nn.init.normal_(system.pose_control.encoder.conv_out.conv.weight, std=0.1)
    for projection in system.reference_extractor.projections:
        torch.nn.init.normal_(projection.weight, std=0.1)
    sequences = system.sampling_sequences(fake_batch(), [0, 1, 2])
    separate = [system(sequences[level], system.hold(x, sequences[level]), t) for level in (0, 1, 2)]
    batched = system.level_velocity(sequences)(x, t, [0, 1, 2]).split(2)
    for one, other in zip(separate, batched):
        torch.testing.assert_close(one, other, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(separate[0], separate[1]) and not torch.allclose(separate[1], separate[2])
    with torch.enable_grad():
        system.loss(fake_batch()).backward()  # the per-step extractor and the control branch are trained through
    assert system.reference_extractor.condition_embedder.time_proj.weight.grad is not None
    assert system.pose_control.blocks[0].block.attn1.to_q.weight.grad is not None


def test_causal_pose_encoder_compresses_like_the_vae_and_patchify():
    from animate.modules.pose_control import CausalPoseEncoder

    encoder = CausalPoseEncoder(8, channels=4)
    assert encoder(torch.zeros(1, 3, 17, 64, 32)).shape == (1, 8, 5, 4, 2)
    assert encoder(torch.zeros(1, 3, 1, 64, 32)).shape == (1, 8, 1, 4, 2)


def test_without_the_reference_extractor_the_reference_is_the_frame_in_front_alone():
    system = onetoall(reference_extractor=False, pose_control=dict(enabled=False))
    assert system.reference_extractor is None and not any("reference_extractor" in name for name, _ in system.named_parameters())
    processors = [block.attn1.processor for block in system.backbone.transformer.blocks]
    assert not any(isinstance(p, HybridReferenceAttnProcessor) for p in processors)  # no HRFA either
    loss = system.loss(fake_batch())
    loss.backward()
    assert torch.isfinite(loss)
    seq = full_sequence(system, fake_batch(), training=False)
    assert seq.prefix_frames == 1 and "reference_states" not in seq.attention_kwargs  # the reference: the frame in front, only
    with pytest.raises(ValueError, match="no path for the reference"):
        onetoall(reference_extractor=False, reference_prefix="none")


def test_the_reference_pose_is_the_pose_of_the_masked_reference():
    system = onetoall(outpainting=dict(probability=1.0))
    batch = fake_batch()
    batch["reference_pose"] = torch.rand(2, 3, 32, 32) * 2 - 1
    prepared = system.prepare_batch(dict(batch), augment=True)
    mask = prepared["reference_mask"].expand(-1, 3, -1, -1) > 0.5  # (B, 3, H, W)
    assert mask[0].any()
    assert torch.all(prepared["reference_pose"][mask] == -1)  # nothing drawn where the reference is masked ...
    assert torch.equal(prepared["reference_pose"][~mask], batch["reference_pose"][~mask])  # ... the rest as it was
    given = torch.zeros(2, 1, 32, 32)
    given[:, :, :, 16:] = 1  # an inference pad mask masks the pose as well
    padded = system.prepare_batch(dict(batch) | {"reference_mask": given}, augment=False)["reference_pose"]
    assert torch.all(padded[..., 16:] == -1) and torch.equal(padded[..., :16], batch["reference_pose"][..., :16])


def test_condition_dropout_realises_the_official_share_of_each_cfg_level():
    from test_guidance import level_of

    system = onetoall(condition_dropout=dict(both=0.1, reference=0.1, pose=0.3))
    torch.manual_seed(0)
    n = 200_000
    drops = system.sample_drops(n)
    levels = level_of(system, drops)
    reference_only = (drops["pose"] & ~drops["reference"]).float().mean().item()  # trained, though not a CFG level of Eq. 16
    shares = [(levels == level).float().mean().item() for level in range(3)]
    expected = [0.1, 0.1, 0.8 * 0.7]  # nothing; the pose alone; pose + reference
    for share, want in zip([*shares, reference_only], [*expected, 0.8 * 0.3]):
        assert abs(share - want) < 4 * (want * (1 - want) / n) ** 0.5, (shares, reference_only)
    with pytest.raises(ValueError, match="condition_dropout"):
        onetoall(condition_dropout=dict(pose=0.1, reference=0.1, text=0.1))


def test_the_constructors_defaults_are_the_configs():
    from omegaconf import OmegaConf

    from animate.methods import onetoall as module

    method = OmegaConf.to_container(OmegaConf.load(Path(CONF) / "method" / "onetoall.yaml"))["method"]
    for key, defaults in [("pose_control", module.POSE_CONTROL_DEFAULTS), ("outpainting", module.OUTPAINTING_DEFAULTS),
                          ("token_replace", module.TOKEN_REPLACE_DEFAULTS), ("reference_noise", module.REFERENCE_NOISE_DEFAULTS),
                          ("condition_dropout", module.CONDITION_DROPOUT_DEFAULTS)]:
        assert method[key] == defaults, key
    system = OneToAll(tiny_backbone(16), ADAMW, extractor_blocks=1)  # every other argument at its default
    assert system.outpainting == method["outpainting"] and system.token_replace == method["token_replace"]
    assert system.condition_dropout == method["condition_dropout"] and system.reference_noise == method["reference_noise"]
    assert system.pose_control.encoder.layers[0].out_channels == method["pose_control"]["channels"]
    assert list(method["trainable"]) == list(module.TRAINABLE_GROUPS)


def test_official_stage_groups_train_the_attention_output_then_the_patch_embedding():
    stage1 = onetoall(trainable=["reference_extractor", "reference_kv", "attention_output"], pose_control=dict(enabled=False), reference_prefix="none")
    trainable = {name for name, p in stage1.named_parameters() if p.requires_grad}
    assert "backbone.transformer.blocks.0.attn1.to_out.0.weight" in trainable
    assert not {"backbone.transformer.blocks.0.attn1.to_q.weight", "backbone.transformer.patch_embedding.weight"} & trainable
    stage2 = onetoall(trainable=["reference_extractor", "reference_kv", "pose_control", "self_attention", "patch_embedding"])
    trainable = {name for name, p in stage2.named_parameters() if p.requires_grad}
    assert {"backbone.transformer.patch_embedding.weight", "backbone.transformer.blocks.0.attn1.to_q.weight"} <= trainable
    assert "backbone.transformer.blocks.0.ffn.net.0.proj.weight" not in trainable


def staged(conf: str, *overrides: str):
    """A One-to-All stage's composed config (the real ones on Wan2.1-T2V-1.3B, weights not loaded)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=CONF, version_base=None):
        return compose(conf, overrides=list(overrides))


def test_the_stages_follow_the_official_recipe():
    stage1, stage2, stage3 = (staged(f"onetoall_stage{i}").method for i in (1, 2, 3))
    assert stage1.reference_prefix == "none" and not stage1.pose_control.enabled  # Eq. 11's prefix arrives with pose control
    assert stage2.reference_prefix == stage3.reference_prefix == "latent"
    assert list(stage1.trainable) == ["reference_extractor", "reference_kv", "attention_output"]
    assert "patch_embedding" in stage2.trainable and "patch_embedding" in stage3.trainable
    assert (stage2.condition_dropout.pose, stage3.condition_dropout.pose, stage3.outpainting.probability) == (0.2, 0.3, 0.3)
    real1, real3 = staged("real/onetoall_stage1", "data.root=/data"), staged("real/onetoall_stage3", "data.root=/data")
    assert real1.data.resolutions == {512: 1.0, 768: 0.0} and real3.data.resolutions == {512: 0.2, 768: 0.8}
    assert (real3.data.w_roi, real3.data.face_enhancement, real3.method.outpainting.probability) == (1.0, 0.5, 0.3)
    for cfg in (real1, real3):
        assert cfg.method.scheduler.lr_lambda.warmup_steps == 5000 and cfg.method.reference_noise.probability == 0.5
        assert (cfg.method.time_sampling.mode, cfg.method.time_sampling.mean, cfg.method.time_sampling.std, cfg.method.time_sampling.shift) == ("logit_normal", 0.0, 1.0, 1.0)


def test_reference_noise_perturbs_the_kept_area_of_the_drawn_share():
    system = onetoall(outpainting=dict(probability=0.0), reference_noise=dict(probability=0.5))
    torch.manual_seed(0)
    batch = fake_batch(b=64)
    batch["reference_mask"] = torch.zeros(64, 1, 32, 32)
    batch["reference_mask"][..., :8] = 1
    noised = system.prepare_batch(dict(batch), augment=True)["reference"]
    changed = (noised != batch["reference"]).flatten(1).any(1)  # (B,)
    assert 16 < changed.sum() < 48  # about half the samples
    assert torch.equal(noised[..., :8], batch["reference"][..., :8])  # the masked area stays as it was
    std = (noised - batch["reference"])[changed][..., 8:].std().item()
    assert 0.9 < std < 1.2  # the official std: exp(exp(N(-3, 0.5))) ~ 1.05
    assert torch.equal(system.prepare_batch(dict(batch), augment=False)["reference"], batch["reference"])  # never at inference


def method_config(name, *overrides):
    """conf/NAME.yaml's ``method`` as the command line composes it (no metrics, no latent cache)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(Path(__file__).parents[1] / "conf"), version_base="1.3"):
        return compose(name, overrides=["method.metrics=null", "method.latent_cache=null", *overrides]).method


@torch.no_grad()
def test_one_to_all_built_from_its_config_samples_on_diffusers_schedule():
    from hydra.utils import instantiate

    system = instantiate(method_config("onetoall")).eval()
    assert system.sampler["schedule"] == "diffusers"
    seen = []
    system.sample_latents(fake_batch(b=1), steps=3, on_step=lambda i, x, t, v: seen.append(t.max().item()))
    torch.testing.assert_close(torch.tensor(seen), sampling_times(3, system.sampler["shift"], schedule="diffusers")[:-1])
    assert not torch.allclose(torch.tensor(seen), sampling_times(3, system.sampler["shift"], schedule="diffsynth")[:-1])


@pytest.mark.parametrize("name, schedule", [("onetoall", "diffusers"), ("unianimate", "diffsynth"), ("everanimate", "diffsynth"), ("frameprompt", "diffsynth")])
def test_each_method_samples_on_its_official_schedule_at_paper_scale_too(name, schedule):
    assert method_config(name).sampler.schedule == schedule
    if name == "onetoall":  # conf/paper_scale/onetoall.yaml: the official 30 steps at shift 7 end 0.231, 0.047, 0
        sampler = method_config(name, "+paper_scale=onetoall").sampler
        times = sampling_times(sampler.steps, sampler.shift, schedule=sampler.schedule)
        torch.testing.assert_close(times[-3:], torch.tensor([0.231, 0.047, 0.0]), atol=1e-3, rtol=0)
