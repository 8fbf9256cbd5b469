"""Wan I2V / Animate's image path: the reference's CLIP tokens reach the image cross-attention, cached, and nothing runs without them silently."""

import numpy as np
import pytest
import torch
from PIL import Image

from animate.backbone import load_backbone
from animate.image_encoder import load_image_encoder

import tiny_systems

CLIP = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8)
I2V = tiny_systems.ARCH | dict(in_channels=36, image_dim=32, added_kv_proj_dim=24)  # added_kv_proj_dim = the blocks' width (2 heads x 12)
VAE = dict(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True])


@pytest.fixture(scope="module")
def clip_dirs(tmp_path_factory):
    """A tiny CLIPVisionModel and its image processor written as Wan's image_encoder/ and image_processor/."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    root = tmp_path_factory.mktemp("wan_i2v")
    torch.manual_seed(0)
    CLIPVisionModel(CLIPVisionConfig(**CLIP)).save_pretrained(root / "image_encoder")
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(root / "image_processor")
    return root / "image_encoder", root / "image_processor"


def i2v_backbone(clip_dirs=None, **image_encoder):
    """A tiny Wan I2V backbone (image cross-attention) built by load_backbone, with the tiny CLIP when ``clip_dirs``."""
    if clip_dirs is not None:
        image_encoder = dict(path=str(clip_dirs[0]), processor=str(clip_dirs[1])) | image_encoder
    return load_backbone(dict(path=None, kind="wan", architecture=I2V), dict(path=None, architecture=VAE), image_encoder=image_encoder)


def test_tokens_match_transformers_own_preprocessing_of_the_same_image(clip_dirs):
    from transformers import CLIPImageProcessor, CLIPVisionModel

    encoder = load_image_encoder(*clip_dirs)
    pixels = np.linspace(0, 255, 48 * 64 * 3).reshape(48, 64, 3).astype(np.uint8)  # a smooth non-square image
    reference = torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 127.5 - 1
    processed = CLIPImageProcessor.from_pretrained(clip_dirs[1])(images=Image.fromarray(pixels), return_tensors="pt").pixel_values
    assert (encoder.preprocess(reference) - processed).abs().mean() < 0.02  # the same resize, crop and normalisation, bar PIL's rounding
    expected = CLIPVisionModel.from_pretrained(clip_dirs[0])(pixel_values=processed, output_hidden_states=True).hidden_states[-2]
    tokens = encoder(reference)
    assert tokens.shape == (1, 17, 32) and torch.allclose(tokens, expected, atol=0.05)


def test_an_i2v_transformer_without_an_image_encoder_is_refused_unless_skipped(clip_dirs):
    with pytest.raises(ValueError, match=r"backbone.image_encoder.path=DIR .* backbone.image_encoder.skip=true"):
        i2v_backbone()
    assert i2v_backbone(skip=True).image_encoder is None
    assert i2v_backbone(clip_dirs).image_encoder.dim == 32
    with pytest.raises(ValueError, match="image_dim is 32"):
        i2v_backbone(architecture=CLIP | dict(hidden_size=16))  # tokens of the wrong width


def test_unianimate_on_i2v_feeds_the_reference_tokens_and_zeros_them_where_the_reference_is_dropped(clip_dirs, tmp_path):
    from animate.methods.unianimate import UniAnimate

    system = UniAnimate(i2v_backbone(clip_dirs), tiny_systems.ADAMW, sampler=dict(steps=2, guidance=[1.5]), latent_cache=str(tmp_path)).eval()
    batch = tiny_systems.fake_batch()
    latents = system.encode(batch, system.latent_inputs(training=True))
    kept = system.sequence(batch, latents, {"pose": torch.tensor([False, False]), "reference": torch.tensor([False, True])}, training=True)
    assert kept.image_context.shape == (2, 17, 32)
    assert kept.image_context[0].abs().sum() > 0 and kept.image_context[1].abs().sum() == 0
    x, t = torch.randn_like(kept.clean), torch.full((2, kept.clean.shape[2]), 0.5)
    with torch.no_grad():
        with_tokens = system(kept, x, t)
        kept.image_context = torch.randn_like(kept.image_context)
        assert not torch.allclose(system(kept, x, t)[0], with_tokens[0])  # the image cross-attention reads them
    hits, misses = system.latent_cache.hits, system.latent_cache.misses
    system.sample_latents(batch)  # the tokens were cached with the first encoding: read back once for every CFG level
    assert (system.latent_cache.hits, system.latent_cache.misses) == (hits + 4, misses)  # 2 clips x (VAE reference clip + CLIP tokens)
    system.train()
    assert torch.isfinite(system.loss(batch))


def test_image_tokens_need_wans_text_length(clip_dirs):
    from animate.backbone import PackedInput

    backbone = i2v_backbone(clip_dirs)
    backbone.text_embedding = backbone.text_embedding[:, :4]
    packed = PackedInput(latents=torch.randn(1, 16, 2, 4, 4), t=torch.full((1, 2), 0.5), channel_cond=torch.zeros(1, 20, 2, 4, 4),
                         image_context=torch.zeros(1, 17, 32))
    with pytest.raises(ValueError, match="backbone.text.length=512"):
        backbone(packed)
