"""Tiny random systems and fabricated batches shared by the method tests (imported as ``tiny_systems``)."""

from functools import partial

import torch
from diffusers import AutoencoderKLWan

from animate.backbone import VideoAutoencoder, WanBackbone, build_transformer, expand_patch_embedding
from animate.methods.everanimate import EverAnimate
from animate.methods.frameprompt import FramePrompt
from animate.methods.onetoall import OneToAll
from animate.methods.text_to_video import TextToVideo
from animate.methods.unianimate import UniAnimate

ARCH = dict(
    patch_size=[1, 2, 2], num_attention_heads=2, attention_head_dim=12, in_channels=16, out_channels=16,
    text_dim=16, freq_dim=32, ffn_dim=32, num_layers=2, rope_max_seq_len=64,
)


def tiny_vae():
    """A random tiny Wan VAE."""
    torch.manual_seed(0)
    return VideoAutoencoder(AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True])).eval()


def tiny_backbone(in_channels=16):
    """A random tiny Wan DiT (2 blocks) with the tiny VAE."""
    torch.manual_seed(0)
    model = build_transformer(**ARCH)
    expand_patch_embedding(model, in_channels)
    return WanBackbone(model, tiny_vae(), torch.randn(1, 4, 16))


def face_keypoints(b, h, w):
    """(B, 133, 3) keypoints with a confident nose, eyes, ears and face in the image's upper middle."""
    g = torch.Generator().manual_seed(1)
    keypoints = torch.zeros(b, 133, 3)
    head = list(range(5)) + list(range(23, 91))
    keypoints[:, head, 0] = w / 2 + (torch.rand(b, len(head), generator=g) - 0.5) * w / 8
    keypoints[:, head, 1] = h / 4 + (torch.rand(b, len(head), generator=g) - 0.5) * h / 8
    keypoints[:, head, 2] = 1.0
    return keypoints


def fake_batch(b=2, t=5, h=32, w=32):
    """A random training-format batch."""
    g = torch.Generator().manual_seed(0)
    rand = lambda *s: torch.rand(*s, generator=g) * 2 - 1
    return {
        "video": rand(b, 3, t, h, w),
        "pose": rand(b, 3, t, h, w),
        "reference": rand(b, 3, h, w),
        "reference_pose": rand(b, 3, h, w),
        "reference_keypoints": face_keypoints(b, h, w),
        "loss_weight": torch.ones(b, 1 + (t - 1) // 4, h // 16, w // 16),
        "person_mask": torch.ones(b, t, h, w, dtype=torch.bool),
        "cache_key": [f"clip{i}" for i in range(b)],
    }


ADAMW = partial(torch.optim.AdamW, lr=1e-3)


def unianimate(**kw):
    """A tiny UniAnimate-DiT with CFG 1.5."""
    return UniAnimate(tiny_backbone(36), ADAMW, sampler=dict(steps=2, guidance=[1.5]), **kw)


def frameprompt(**kw):
    """A tiny FramePrompt without CFG."""
    return FramePrompt(tiny_backbone(16), ADAMW, sampler=dict(steps=2, guidance=[1.0]), **kw)


def text_to_video(**kw):
    """A tiny T2V base (no conditions, no CFG)."""
    return TextToVideo(tiny_backbone(16), ADAMW, sampler=dict(steps=2, guidance=[]), **kw)


def onetoall(**kw):
    """A tiny One-to-All (M = 1 extractor block of N = 2) with three-level cumulative CFG."""
    kw = dict(extractor_blocks=1, pose_control=dict(channels=4, blocks_per_stage=1), sampler=dict(steps=2, guidance=[1.5, 2.5])) | kw
    return OneToAll(tiny_backbone(16), ADAMW, **kw)


def everanimate(**kw):
    """A tiny EverAnimate (K = 2 identity views, L_m = 1) without CFG."""
    return EverAnimate(tiny_backbone(16), ADAMW, **(dict(sampler=dict(steps=2, guidance=[]), identity_views=2) | kw))


ANIMATE_EXTRAS = dict(motion_encoder_channel_sizes={"4": 8, "8": 8, "16": 8}, motion_encoder_size=16, motion_style_dim=8, motion_dim=4,
                      motion_encoder_dim=16, face_encoder_hidden_dim=16, face_encoder_num_heads=2, inject_face_latents_blocks=2,
                      motion_encoder_batch_size=8)


def everanimate_on_animate(**kw):
    """A tiny EverAnimate on a Wan2.2-Animate transformer grown from the tiny random base."""
    from animate.backbone import animate_from_base

    base = tiny_backbone(16)
    transformer, _ = animate_from_base(base.transformer, **ANIMATE_EXTRAS)
    backbone = WanBackbone(transformer, base.vae, base.text_embedding)
    return EverAnimate(backbone, ADAMW, **(dict(sampler=dict(steps=2, guidance=[]), identity_views=2) | kw))
