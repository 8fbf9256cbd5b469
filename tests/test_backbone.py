"""The packed forward against diffusers' own forward, and each extension point."""

from pathlib import Path

import pytest
import tomllib
import torch
from packaging.requirements import Requirement

from animate import diffusers_wan as wan
from animate.backbone import (
    PackedInput,
    WanBackbone,
    build_transformer,
    empty_prompt_embedding,
    expand_patch_embedding,
    rotary_embedding,
)
from animate.diffusers_wan import rope_tables

ARCH = dict(
    patch_size=[1, 2, 2], num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
    text_dim=16, freq_dim=32, ffn_dim=32, num_layers=2, rope_max_seq_len=32,
)


@pytest.fixture
def backbone():
    torch.manual_seed(0)
    model = build_transformer(**ARCH).eval()
    return WanBackbone(model, None, torch.randn(1, 5, 16))


def test_matches_diffusers_forward_with_uniform_time(backbone):
    latents = torch.randn(2, 4, 3, 8, 8)
    t = torch.tensor([0.3, 0.8])
    with torch.no_grad():
        ours = backbone(PackedInput(latents, t[:, None].expand(2, 3)))
        ref = backbone.transformer(latents, t * 1000, backbone.text_embedding.expand(2, -1, -1)).sample
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)


ANIMATE_ARCH = dict(
    patch_size=[1, 2, 2], num_attention_heads=2, attention_head_dim=12, in_channels=36, latent_channels=16, out_channels=16,
    text_dim=16, freq_dim=32, ffn_dim=32, num_layers=4, rope_max_seq_len=32, motion_encoder_channel_sizes={"4": 16, "8": 16, "16": 16},
    motion_encoder_size=16, motion_style_dim=8, motion_dim=4, motion_encoder_dim=16, face_encoder_hidden_dim=16,
    face_encoder_num_heads=2, inject_face_latents_blocks=2, motion_encoder_batch_size=4,
)


@pytest.mark.parametrize("image_dim", [None, 8])
def test_animate_backbone_matches_diffusers_wan_animate_forward(image_dim):
    from animate.modules.face_adapter import FaceAdapterHook, face_motion_tokens

    torch.manual_seed(0)
    model = build_transformer("animate", **ANIMATE_ARCH, image_dim=image_dim).eval()
    backbone = WanBackbone(model, None, torch.randn(1, 5, 16))
    b, f, h, w = 2, 3, 8, 8  # a reference slot and 3 frames of 16 channels, the I2V-style y on 20 more
    noisy, y = torch.randn(b, 16, f + 1, h, w), torch.randn(b, 20, f + 1, h, w)
    pose, faces = torch.randn(b, 16, f, h, w), torch.rand(b, 3, 4 * (f - 1) + 1, 16, 16) * 2 - 1
    # with image tokens the text has Wan's 512 tokens: diffusers' attention splits image from text by that count
    text, image = torch.randn(b, 4 if image_dim is None else 512, 16), None if image_dim is None else torch.randn(b, 3, image_dim)
    t = torch.tensor([0.3, 0.8])
    with torch.no_grad():
        pose_tokens = model.pose_patch_embedding(pose).flatten(2).transpose(1, 2)  # (B, 3 * 16, D): every frame but the slot
        ours = backbone(PackedInput(
            noisy, t[:, None].expand(b, f + 1), channel_cond=y, context=text, image_context=image,
            injections={-1: torch.cat([torch.zeros_like(pose_tokens[:, : h * w // 4]), pose_tokens], dim=1)},
            block_hook=FaceAdapterHook(model, face_motion_tokens(model, faces, lead_frames=1)),
        ))
        ref = model(torch.cat([noisy, y], dim=1), t * 1000, text, image, pose, faces, return_dict=False)[0]
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)


def test_an_animate_transformer_grown_from_a_base_starts_as_the_base(backbone):
    from animate.backbone import animate_from_base

    base = build_transformer(**(ARCH | {"in_channels": 16, "out_channels": 16})).eval()
    animate_cfg = {k: v for k, v in ANIMATE_ARCH.items() if k.startswith(("motion_", "face_", "inject_"))}
    model, copied = animate_from_base(base, **animate_cfg)
    model.eval()
    assert "blocks.0.attn1.to_q.weight" in copied and "pose_patch_embedding.weight" not in copied
    latents, t = torch.randn(1, 16, 3, 8, 8), torch.tensor([0.6])
    with torch.no_grad():
        ref = base(latents, t * 1000, backbone.text_embedding).sample
        ours = model(torch.cat([latents, torch.randn(1, 20, 3, 8, 8)], dim=1), t * 1000, backbone.text_embedding, None,
                     torch.randn(1, 16, 2, 8, 8), torch.rand(1, 3, 5, 16, 16) * 2 - 1, return_dict=False)[0]
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)  # the new channels, pose and faces add nothing yet


def test_an_animate_transformer_needs_whole_groups_of_blocks_per_face_adapter():
    with pytest.raises(ValueError, match="multiple of inject_face_latents_blocks"):
        build_transformer("animate", **(ANIMATE_ARCH | {"num_layers": 5}))


def test_sample_prediction_turns_the_network_output_into_a_velocity(backbone):
    latents, t = torch.randn(2, 4, 3, 8, 8), torch.tensor([[0.2, 0.5, 0.9], [0.0, 0.4, 1.0]])
    sampling = WanBackbone(backbone.transformer, None, backbone.text_embedding, prediction="sample", prediction_min_time=0.1)
    with torch.no_grad():
        x0 = backbone(PackedInput(latents, t))  # the same network's raw output, read as x0
        v = sampling(PackedInput(latents, t))
    torch.testing.assert_close(v, (latents - x0) / t.clamp_min(0.1)[:, None, :, None, None])
    with pytest.raises(ValueError, match="backbone.prediction='noise'"):
        WanBackbone(backbone.transformer, None, prediction="noise")


def test_per_frame_time_matches_per_token_timestep(backbone):
    latents = torch.randn(1, 4, 3, 8, 8)
    t = torch.tensor([[0.0, 0.5, 0.9]])
    per_token = (t * 1000).repeat_interleave(16, dim=1)  # 4x4 tokens per frame
    with torch.no_grad():
        ours = backbone(PackedInput(latents, t))
        ref = backbone.transformer(latents, per_token, backbone.text_embedding).sample
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)


def test_injection_before_block0_and_after_block(backbone):
    latents = torch.randn(1, 4, 2, 8, 8)
    t = torch.full((1, 2), 0.5)
    with torch.no_grad():
        base = backbone(PackedInput(latents, t))
        zero = backbone(PackedInput(latents, t, injections={-1: torch.zeros(1, 32, 24)}))
        before = backbone(PackedInput(latents, t, injections={-1: torch.randn(1, 32, 24)}))
        after = backbone(PackedInput(latents, t, injections={1: torch.randn(1, 32, 24)}))
    torch.testing.assert_close(base, zero)
    assert not torch.allclose(base, before) and not torch.allclose(base, after)


def test_channel_condition_requires_matching_patch_embedding(backbone):
    latents = torch.randn(1, 4, 2, 8, 8)
    with pytest.raises(ValueError, match="in_channels"):
        backbone(PackedInput(latents, torch.zeros(1, 2), channel_cond=torch.randn(1, 2, 2, 8, 8)))
    expand_patch_embedding(backbone.transformer, 6)
    with torch.no_grad():
        zero_cond = backbone(PackedInput(latents, torch.zeros(1, 2), channel_cond=torch.zeros(1, 2, 2, 8, 8)))
        rand_cond = backbone(PackedInput(latents, torch.zeros(1, 2), channel_cond=torch.randn(1, 2, 2, 8, 8)))
    # new channels start at zero: the widened model ignores them until trained
    torch.testing.assert_close(zero_cond, rand_cond)


def test_attention_mask_blocks_information_flow(backbone):
    latents = torch.randn(1, 4, 2, 8, 8)
    t = torch.zeros(1, 2)
    frame = torch.tensor([[0, 1]]).repeat_interleave(16, dim=1)  # (1, L)
    same_frame = (frame[:, :, None] == frame[:, None, :])[:, None]  # frames cannot see each other
    changed = latents.clone()
    changed[:, :, 1] += 1.0
    with torch.no_grad():
        a = backbone(PackedInput(latents, t, attention_mask=same_frame))
        b = backbone(PackedInput(changed, t, attention_mask=same_frame))
        c = backbone(PackedInput(changed, t))
    torch.testing.assert_close(a[:, :, 0], b[:, :, 0])  # frame 0 is blind to frame 1
    assert not torch.allclose(a[:, :, 0], c[:, :, 0])


class RecordingProcessor:
    """Diffusers' Wan processor plus a per-sample offset read from a keyword input."""

    def __init__(self):
        self.base, self.calls = wan.self_attention_processor(), 0

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None, offset=None):
        self.calls += 1
        return self.base(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb) + offset[:, None, None]


def test_attention_kwargs_reach_every_blocks_self_attention_processor(backbone):
    latents = torch.randn(2, 4, 2, 8, 8)
    t = torch.full((2, 2), 0.5)
    with torch.no_grad():
        base = backbone(PackedInput(latents, t))
        processors = [RecordingProcessor() for _ in backbone.transformer.blocks]
        for block, processor in zip(backbone.transformer.blocks, processors):
            wan.set_self_attention_processor(block, processor)
        same = backbone(PackedInput(latents, t, attention_kwargs={"offset": torch.zeros(2)}))
        moved = backbone(PackedInput(latents, t, attention_kwargs={"offset": torch.tensor([0.0, 1.0])}))
    assert all(p.calls == 2 for p in processors)
    torch.testing.assert_close(same, base)
    torch.testing.assert_close(moved[0], base[0])
    assert not torch.allclose(moved[1], base[1])


def test_frame_ids_change_rope_time_only(backbone):
    rope = backbone.transformer.rope
    cos_default, _ = rotary_embedding(rope, torch.arange(3)[None], 4, 4)
    cos_zero, _ = rotary_embedding(rope, torch.zeros(1, 3, dtype=torch.long), 4, 4)
    # diffusers' own rope for the same grid
    ref_cos, _ = rope(torch.zeros(1, 4, 3, 8, 8))
    torch.testing.assert_close(cos_default, ref_cos.float())
    t_dim = rope_tables(rope)[0][0].shape[1]  # the time part of the head dimension
    torch.testing.assert_close(cos_zero[..., t_dim:], cos_default[..., t_dim:])
    assert torch.all(cos_zero[..., :t_dim] == 1)


def test_gradient_checkpointing_gives_same_gradients(backbone):
    latents = torch.randn(1, 4, 2, 8, 8)
    t = torch.full((1, 2), 0.5)
    grads = []
    for enabled in (False, True):
        backbone.zero_grad()
        backbone.enable_gradient_checkpointing(enabled)
        backbone(PackedInput(latents, t)).square().mean().backward()
        grads.append(backbone.transformer.blocks[0].attn1.to_q.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])


def test_seeded_prompt_embedding_is_deterministic():
    a = empty_prompt_embedding(16, length=8)
    b = empty_prompt_embedding(16, length=8)
    assert a.shape == (1, 8, 16) and torch.equal(a, b)


def test_unsupported_diffusers_is_one_clear_error():
    from animate.diffusers_wan import SUPPORTED_DIFFUSERS, check_diffusers_version

    assert check_diffusers_version("0.42.1") == "0.42.1"
    with pytest.raises(ImportError, match=r"diffusers 0\.30\.0 is not supported.*pip install 'diffusers"):
        check_diffusers_version("0.30.0")
    with pytest.raises(ImportError, match="not supported"):
        check_diffusers_version("9.0.0")
    pyproject = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())
    pinned = [Requirement(r) for r in pyproject["project"]["dependencies"] if r.startswith("diffusers")]
    assert [r.specifier for r in pinned] == [SUPPORTED_DIFFUSERS]  # the pin and the adapter's check agree


def test_compression_comes_from_the_vae_and_the_patch_size():
    from diffusers import AutoencoderKLWan

    from animate.backbone import VideoAutoencoder, compression_of
    from animate.modules.pose_encoders import ReferencePoseEncoder

    torch.manual_seed(0)
    model = build_transformer(**(ARCH | {"patch_size": [1, 4, 4]}))
    vae = VideoAutoencoder(AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 1, 1], num_res_blocks=0,
                                            temperal_downsample=[True, True], scale_factor_spatial=4))
    compression = WanBackbone(model, vae, torch.randn(1, 5, 16)).compression
    assert (compression.vae_time, compression.vae_space, compression.patch_space, compression.token_space) == (4, 4, 4, 16)
    assert compression.token_grid(9, 64, 32) == (3, 4, 2) and compression.latent_size(64, 32) == (16, 8)
    assert vae.encode(torch.zeros(1, 3, 5, 32, 16)).shape == (1, 4, 2, 8, 4)
    assert ReferencePoseEncoder(compression=compression)(torch.zeros(1, 3, 32, 16)).shape == (1, 20, 1, 8, 4)
    assert compression_of(build_transformer(**ARCH)).vae_space == 8  # no VAE: Wan2.1's 8x
    with pytest.raises(ValueError, match="square spatial patches"):
        compression_of(build_transformer(**(ARCH | {"patch_size": [1, 2, 4]})))


def test_a_packed_forward_with_4x4_patches_keeps_the_latent_shape():
    torch.manual_seed(0)
    backbone = WanBackbone(build_transformer(**(ARCH | {"patch_size": [1, 4, 4]})).eval(), None, torch.randn(1, 5, 16))
    latents = torch.randn(2, 4, 3, 16, 8)
    velocity = backbone(PackedInput(latents=latents, t=torch.full((2, 3), 0.5)))
    assert velocity.shape == latents.shape


def test_the_attention_backend_is_a_config_key_with_the_fastest_kernel_as_auto():
    from animate.backbone import load_backbone

    arch = dict(patch_size=[1, 2, 2], num_attention_heads=2, attention_head_dim=12, in_channels=16, out_channels=16,
                text_dim=16, freq_dim=32, ffn_dim=32, num_layers=1, rope_max_seq_len=64)
    try:
        backbone = load_backbone(dict(path=None, architecture=arch), attention_backend="auto")  # no CUDA here: PyTorch's SDPA
        assert {str(block.attn1.processor._attention_backend) for block in backbone.transformer.blocks} == {"AttentionBackendName.NATIVE"}
        with pytest.raises(ValueError, match=r"backbone.attention_backend=flash: .*flash-attn"):
            load_backbone(dict(path=None, architecture=arch), attention_backend="flash")  # not installed: said so, by key
        with pytest.raises(ValueError, match=r"backbone.attention_backend=fastest: .*must be one of"):
            load_backbone(dict(path=None, architecture=arch), attention_backend="fastest")
    finally:
        from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry

        _AttentionBackendRegistry.set_active_backend(AttentionBackendName.NATIVE)  # diffusers keeps the choice process-wide


def test_vae_tiling_is_a_config_key_that_reaches_diffusers():
    from animate.backbone import load_backbone

    arch = dict(patch_size=[1, 2, 2], num_attention_heads=2, attention_head_dim=12, in_channels=16, out_channels=16,
                text_dim=16, freq_dim=32, ffn_dim=32, num_layers=1, rope_max_seq_len=64)
    vae = dict(path=None, architecture=dict(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]))
    assert not load_backbone(dict(path=None, architecture=arch), vae).vae.vae.use_tiling
    tiled = load_backbone(dict(path=None, architecture=arch), vae | {"tiling": {"tile_sample_min_height": 32, "tile_sample_min_width": 32,
                                                                              "tile_sample_stride_height": 16, "tile_sample_stride_width": 16}}).vae
    assert tiled.vae.use_tiling and tiled.vae.tile_sample_min_width == 32
    assert tiled.decode(torch.zeros(1, 16, 2, 8, 8)).shape == (1, 3, 5, 64, 64)  # 64 px in 32 px tiles
