"""Loading Wan weights from local directories in diffusers and original Wan layout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKLWan, WanTransformer3DModel
from safetensors.torch import load_file, save_file

from animate.weights import (
    INDEX_NAME,
    load_transformer,
    load_vae,
    save_diffusers,
    save_original_layout,
    to_original_layout,
)

TINY_TRANSFORMER = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=2,
    attention_head_dim=12,
    in_channels=4,
    out_channels=4,
    text_dim=16,
    freq_dim=256,
    ffn_dim=32,
    num_layers=2,
    rope_max_seq_len=32,
)
TINY_I2V = dict(TINY_TRANSFORMER, in_channels=12, image_dim=8, added_kv_proj_dim=24)
# the original Wan2.1 VAE structure (what diffusers' conversion reads) at tiny width
TINY_WAN21_VAE = dict(base_dim=4, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, temperal_downsample=[False, True, True])
TINY_VAE = dict(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True])


def _random_model(cls: type, config: dict, seed: int = 0):
    """A model with every parameter random (zero-initialised ones too), in eval mode."""
    torch.manual_seed(seed)
    model = cls(**config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0, 0.2)
    return model


def _assert_same_weights(expected: torch.nn.Module, actual: torch.nn.Module) -> None:
    """Every state-dict entry bit-identical, same keys."""
    expected_state, actual_state = expected.state_dict(), actual.state_dict()
    assert expected_state.keys() == actual_state.keys()
    for key, value in expected_state.items():
        assert torch.equal(value, actual_state[key]), key


def _transformer_outputs(model: WanTransformer3DModel) -> torch.Tensor:
    """Forward a fixed random input through the transformer (I2V image tokens when it takes them)."""
    generator = torch.Generator().manual_seed(1)
    config = model.config
    inputs = dict(
        hidden_states=torch.randn(1, config.in_channels, 3, 8, 8, generator=generator),
        timestep=torch.tensor([500]),
        encoder_hidden_states=torch.randn(1, 5, config.text_dim, generator=generator),
        return_dict=False,
    )
    if config.image_dim is not None:
        inputs["encoder_hidden_states_image"] = torch.randn(1, 4, config.image_dim, generator=generator)
    with torch.no_grad():
        return model(**inputs)[0]


def _vae_outputs(model: AutoencoderKLWan) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and decoding of a fixed 5x32x32 clip."""
    video = torch.rand(1, 3, 5, 32, 32, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        latent = model.encode(video).latent_dist.mean  # (1, 16, 2, 4, 4)
        return latent, model.decode(latent).sample


@pytest.fixture(scope="module", params=[TINY_TRANSFORMER, TINY_I2V], ids=["t2v", "i2v"])
def transformer(request) -> WanTransformer3DModel:
    """A tiny random T2V or I2V transformer."""
    return _random_model(WanTransformer3DModel, request.param)


@pytest.fixture(scope="module")
def wan21_vae() -> AutoencoderKLWan:
    """A tiny random VAE with the Wan2.1 structure."""
    return _random_model(AutoencoderKLWan, TINY_WAN21_VAE)


@pytest.fixture(scope="module")
def transformer_config_dir(tmp_path_factory) -> Path:
    """A folder holding only the diffusers config.json of the tiny T2V transformer."""
    directory = tmp_path_factory.mktemp("transformer_config")
    WanTransformer3DModel(**TINY_TRANSFORMER).save_config(directory)
    return directory


def test_transformer_diffusers_layout_round_trip(transformer, tmp_path):
    reloaded = load_transformer(save_diffusers(transformer, tmp_path / "diffusers"))
    _assert_same_weights(transformer, reloaded)
    assert torch.equal(_transformer_outputs(transformer), _transformer_outputs(reloaded))


def test_wan_animate_diffusers_layout_loads_as_an_animate_transformer(tmp_path):
    from test_backbone import ANIMATE_ARCH

    from animate.backbone import build_transformer, load_backbone

    torch.manual_seed(0)
    animate = build_transformer("animate", **ANIMATE_ARCH).eval()
    path = save_diffusers(animate, tmp_path / "animate")
    reloaded = load_transformer(path)
    assert type(reloaded).__name__ == "WanAnimateTransformer3DModel"
    _assert_same_weights(animate, reloaded)
    backbone = load_backbone({"path": str(path)}, image_encoder={"skip": True})  # weights only here: the image path is tests/test_image_encoder.py's
    assert type(backbone.transformer).__name__ == "WanAnimateTransformer3DModel" and backbone.in_channels == 36


def _animate(**overrides):
    """A tiny random Wan2.2-Animate transformer (a 16 px motion encoder: 2 residual blocks)."""
    from test_backbone import ANIMATE_ARCH

    from animate.backbone import build_transformer

    torch.manual_seed(0)
    return build_transformer("animate", **(ANIMATE_ARCH | overrides)).eval()


def test_wan_animate_original_layout_round_trip(tmp_path):
    from animate.backbone import load_backbone

    animate = _animate()
    file = save_original_layout(animate, tmp_path / "wan" / "diffusion_pytorch_model.safetensors")
    stored = load_file(file)
    # as the released checkpoints hold them: blur kernels, (1, C, 1, 1) activation biases, one key-value linear
    assert stored["motion_encoder.enc.net_app.convs.1.conv2.0.kernel"].shape == (4, 4)
    assert stored["motion_encoder.enc.net_app.convs.0.1.bias"].shape == (1, 16, 1, 1)
    assert stored["motion_encoder.enc.net_app.convs.3.weight"].shape == (8, 16, 4, 4)  # the output conv after 2 blocks
    assert stored["face_adapter.fuser_blocks.1.linear1_kv.weight"].shape == (48, 24)
    config = save_diffusers(animate, tmp_path / "config")
    reloaded = load_transformer(file, config=config)
    assert type(reloaded).__name__ == "WanAnimateTransformer3DModel"
    _assert_same_weights(animate, reloaded)
    backbone = load_backbone({"path": str(file.parent), "config": str(config)}, image_encoder={"skip": True})
    _assert_same_weights(animate, backbone.transformer)


def test_animate_motion_encoder_names_agree_with_diffusers_at_512_px():
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    from animate.weights import _animate_to_diffusers

    sizes = {str(2**i): 4 for i in range(2, 10)}
    original = to_original_layout(_animate(motion_encoder_size=512, motion_encoder_channel_sizes=sizes))
    assert "motion_encoder.enc.net_app.convs.8.weight" in original  # the released 512 px layout: 7 blocks
    theirs = convert_wan_transformer_to_diffusers({key: value for key, value in original.items() if not key.endswith(".kernel")})
    ours = _animate_to_diffusers(original)
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[key], theirs[key]) for key in ours)


def test_transformer_original_layout_round_trip(transformer, tmp_path):
    file = save_original_layout(transformer, tmp_path / "wan" / "diffusion_pytorch_model.safetensors")
    config_dir = save_diffusers(transformer, tmp_path / "diffusers")
    for path in (file, file.parent):
        reloaded = load_transformer(path, config=config_dir)
        _assert_same_weights(transformer, reloaded)
        assert torch.equal(_transformer_outputs(transformer), _transformer_outputs(reloaded))


def test_original_transformer_keys_are_wan_names(transformer):
    keys = to_original_layout(transformer).keys()
    assert {"head.head.weight", "head.modulation", "text_embedding.0.weight", "time_projection.1.weight"} <= keys
    assert {"blocks.0.self_attn.q.weight", "blocks.0.cross_attn.o.bias", "blocks.1.norm3.weight", "blocks.1.ffn.2.weight"} <= keys
    assert not any("attn1" in key or "to_q" in key or "condition_embedder" in key for key in keys)
    if transformer.config.image_dim is not None:
        assert {"img_emb.proj.0.weight", "img_emb.proj.4.bias", "blocks.0.cross_attn.k_img.weight", "blocks.0.cross_attn.norm_k_img.weight"} <= keys


def test_sharded_original_checkpoint_beside_wan_config(transformer, wan21_vae, tmp_path):
    """The Wan-AI repository layout: original config.json, indexed shards and Wan2.1_VAE.pth side by side."""
    state_dict = {key: value.contiguous() for key, value in to_original_layout(transformer).items()}
    keys = sorted(state_dict)
    shards = {"diffusion_pytorch_model-00001-of-00002.safetensors": keys[::2], "diffusion_pytorch_model-00002-of-00002.safetensors": keys[1::2]}
    for name, shard_keys in shards.items():
        save_file({key: state_dict[key] for key in shard_keys}, tmp_path / name)
    weight_map = {key: name for name, shard_keys in shards.items() for key in shard_keys}
    (tmp_path / INDEX_NAME).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "WanModel", "dim": 24}))
    save_original_layout(wan21_vae, tmp_path / "Wan2.1_VAE.pth")

    _assert_same_weights(transformer, load_transformer(tmp_path, config=save_diffusers(transformer, tmp_path / "t")))
    _assert_same_weights(wan21_vae, load_vae(tmp_path, config=save_diffusers(wan21_vae, tmp_path / "v")))
    with pytest.raises(ValueError, match="need a diffusers config.*pass config=DIR_WITH_DIFFUSERS_CONFIG"):
        load_transformer(tmp_path)


def test_sharded_diffusers_layout(transformer, tmp_path):
    transformer.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / INDEX_NAME).is_file()
    _assert_same_weights(transformer, load_transformer(tmp_path))


def test_comfyui_prefixed_original_keys(transformer_config_dir, tmp_path):
    model = _random_model(WanTransformer3DModel, TINY_TRANSFORMER)
    prefixed = {f"model.diffusion_model.{key}": value.contiguous() for key, value in to_original_layout(model).items()}
    save_file(prefixed, tmp_path / "wan.safetensors")
    _assert_same_weights(model, load_transformer(tmp_path / "wan.safetensors", config=transformer_config_dir))


def test_vae_original_layout_round_trip(wan21_vae, tmp_path):
    file = save_original_layout(wan21_vae, tmp_path / "Wan2.1_VAE.pth")
    assert "decoder.middle.0.residual.0.gamma" in torch.load(file, weights_only=True)
    reloaded = load_vae(file, config=save_diffusers(wan21_vae, tmp_path / "diffusers"))
    _assert_same_weights(wan21_vae, reloaded)
    for expected, actual in zip(_vae_outputs(wan21_vae), _vae_outputs(reloaded)):
        assert torch.equal(expected, actual)


def test_vae_diffusers_layout_round_trip(tmp_path):
    vae = _random_model(AutoencoderKLWan, TINY_VAE)
    reloaded = load_vae(save_diffusers(vae, tmp_path))
    _assert_same_weights(vae, reloaded)
    for expected, actual in zip(_vae_outputs(vae), _vae_outputs(reloaded)):
        assert torch.equal(expected, actual)


def test_torch_dtype_is_applied(transformer, tmp_path):
    model = load_transformer(save_diffusers(transformer, tmp_path), torch_dtype=torch.bfloat16)
    assert model.proj_out.weight.dtype == torch.bfloat16


def test_vae_without_original_layout_is_refused():
    with pytest.raises(ValueError, match="no original Wan layout that diffusers .* can read back"):
        to_original_layout(AutoencoderKLWan(**TINY_VAE))


def test_missing_config_names_the_directory(transformer, tmp_path):
    save_original_layout(transformer, tmp_path / "wan.safetensors")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no config\.json in .*empty: pass config=DIR_WITH_DIFFUSERS_CONFIG"):
        load_transformer(tmp_path / "wan.safetensors", config=tmp_path / "empty")
    with pytest.raises(ValueError, match=r"wan\.safetensors is a single file: pass config="):
        load_transformer(tmp_path / "wan.safetensors")


def test_config_of_another_class_is_refused(transformer, tmp_path):
    save_original_layout(transformer, tmp_path / "wan.safetensors")
    vae_config = save_diffusers(AutoencoderKLWan(**TINY_VAE), tmp_path / "vae")
    with pytest.raises(ValueError, match="not a diffusers WanTransformer3DModel config .*'AutoencoderKLWan'"):
        load_transformer(tmp_path / "wan.safetensors", config=vae_config)


def test_shape_mismatch_names_path_and_key(tmp_path):
    model = _random_model(WanTransformer3DModel, TINY_TRANSFORMER)
    save_original_layout(model, tmp_path / "wan.safetensors")
    WanTransformer3DModel(**dict(TINY_TRANSFORMER, ffn_dim=48)).save_config(tmp_path / "wider")
    with pytest.raises(ValueError, match=r"wan\.safetensors: weights do not match .*blocks\.0\.ffn\.net\.0\.proj\.bias \(32,\) vs \(48,\)"):
        load_transformer(tmp_path / "wan.safetensors", config=tmp_path / "wider")


def test_missing_keys_are_reported(transformer_config_dir, tmp_path):
    state_dict = to_original_layout(_random_model(WanTransformer3DModel, TINY_TRANSFORMER))
    del state_dict["blocks.1.ffn.2.weight"]
    save_file({key: value.contiguous() for key, value in state_dict.items()}, tmp_path / "wan.safetensors")
    with pytest.raises(ValueError, match=r"1 missing \(e\.g\. blocks\.1\.ffn\.net\.2\.weight\)"):
        load_transformer(tmp_path / "wan.safetensors", config=transformer_config_dir)


def test_unknown_keys_and_wrong_model_are_refused(wan21_vae, transformer_config_dir, tmp_path):
    save_file({"some.other.weight": torch.zeros(2)}, tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match=r"other\.safetensors: not Wan transformer weights: expected original Wan keys like head\.head\.weight"):
        load_transformer(tmp_path / "other.safetensors", config=transformer_config_dir)
    save_original_layout(wan21_vae, tmp_path / "vae.pth")
    with pytest.raises(ValueError, match=r"vae\.pth: not Wan transformer weights"):
        load_transformer(tmp_path / "vae.pth", config=transformer_config_dir)


def test_missing_and_unreadable_files(transformer_config_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere: no such file or directory"):
        load_vae(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"no Wan VAE weights in this directory \(looked for Wan2\.1_VAE\.pth"):
        load_vae(transformer_config_dir)
    (tmp_path / "broken.pth").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match=r"broken\.pth: cannot read torch weights"):
        load_vae(tmp_path / "broken.pth", config=transformer_config_dir)
    (tmp_path / INDEX_NAME).write_text(json.dumps({"weight_map": {"a": "gone.safetensors"}}))
    with pytest.raises(FileNotFoundError, match=r"index\.json: names shards that are not in .*: gone\.safetensors"):
        load_transformer(tmp_path, config=transformer_config_dir)


def test_save_refuses_unknown_suffix(wan21_vae, tmp_path):
    with pytest.raises(ValueError, match=r"vae\.bin: unknown weight file suffix"):
        save_original_layout(wan21_vae, tmp_path / "vae.bin")
