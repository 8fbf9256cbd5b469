"""A LoRA adapter exported alone: diffusers' WanPipeline loads both layouts and reproduces the trained transformer; the CLI writes it."""

import copy
import json
import logging

import pytest
import torch
from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel
from omegaconf import OmegaConf
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from animate.lora import LORA_LAYOUTS, add_lora, lora_metadata, lora_state_dict
from common.cli import compose_config
from experiments.cli import run
from experiments.export import LORA_FILE, export
from experiments.prediction import build_system, load_run

from tiny_systems import ARCH

RANK, ALPHA = 4, 6  # alpha != rank: the scale 1.5 must travel with the adapter


def randomise_lora(module: nn.Module, seed: int = 0) -> nn.Module:
    """Give every lora_B (zero at injection) random values, so the adapter changes the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=g) * 0.1)
    return module


def velocity(transformer: nn.Module) -> torch.Tensor:
    """The transformer's output on a fixed input sized from its config: (1, C, 2, 2 p_h, 2 p_w)."""
    config = transformer.config
    g = torch.Generator().manual_seed(1)
    _, ph, pw = config.patch_size
    x = torch.randn(1, config.in_channels, 2, 2 * ph, 2 * pw, generator=g)
    context = torch.randn(1, 4, config.text_dim, generator=g)
    with torch.no_grad():
        return transformer(x, torch.tensor([500.0]), context, return_dict=False)[0]


def pipeline(transformer: nn.Module) -> WanPipeline:
    """A WanPipeline around a copy of ``transformer``, with a tiny random VAE and no text encoder."""
    vae = AutoencoderKLWan(base_dim=4, z_dim=16, dim_mult=[1, 1, 1], num_res_blocks=1, temperal_downsample=[True, True], scale_factor_spatial=4)
    return WanPipeline(tokenizer=None, text_encoder=None, vae=vae, scheduler=FlowMatchEulerDiscreteScheduler(), transformer=copy.deepcopy(transformer))


@pytest.fixture(scope="module")
def base():
    """A tiny random diffusers WanTransformer3DModel (2 blocks)."""
    torch.manual_seed(0)
    return WanTransformer3DModel(**ARCH).eval()


@pytest.fixture(scope="module")
def trained(base):
    """``base`` with a rank-4, alpha-6 LoRA on q, k, v, o, ffn.0, ffn.2 and random adapter weights."""
    return randomise_lora(add_lora(copy.deepcopy(base), rank=RANK, alpha=ALPHA)).eval()


@pytest.mark.parametrize("layout", LORA_LAYOUTS)
def test_wan_pipeline_loads_the_adapter_and_gives_the_trained_transformers_output(layout, base, trained, tmp_path):
    path = tmp_path / "adapter.safetensors"
    save_file(lora_state_dict(trained, layout), path, metadata=lora_metadata(trained) if layout == "diffusers" else None)
    pipe = pipeline(base)
    pipe.load_lora_weights(str(path))
    expected = velocity(trained)
    assert (velocity(base) - expected).abs().max() > 1e-2  # the adapter does something
    torch.testing.assert_close(velocity(pipe.transformer), expected, rtol=1e-5, atol=1e-5)


def test_diffusers_layout_names_and_alpha_metadata(trained, tmp_path):
    state = lora_state_dict(trained, "diffusers", torch.float16)
    assert "transformer.blocks.0.attn1.to_q.lora_A.weight" in state and "transformer.blocks.1.ffn.net.2.lora_B.weight" in state
    assert len(state) == 2 * 2 * 10 and all(value.dtype == torch.float16 for value in state.values())  # 2 blocks x 10 layers x (A, B)
    assert state["transformer.blocks.0.attn1.to_q.lora_A.weight"].shape == (RANK, 24)
    save_file(state, tmp_path / "a.safetensors", metadata=lora_metadata(trained))
    with safe_open(str(tmp_path / "a.safetensors"), "pt") as stored:
        header = json.loads(stored.metadata()["lora_adapter_metadata"])
    assert header["transformer.r"] == RANK and header["transformer.lora_alpha"] == ALPHA


def test_comfyui_layout_has_original_wan_names_and_alpha_scalars(trained):
    state = lora_state_dict(trained, "comfyui", torch.bfloat16)
    assert next(iter(state)) == "diffusion_model.blocks.0.self_attn.q.lora_A.weight"
    modules = {key.removeprefix("diffusion_model.blocks.0.").rsplit(".", 2 if key.endswith(".weight") else 1)[0] for key in state if ".blocks.0." in key}
    assert modules == {f"{attn}.{x}" for attn in ("self_attn", "cross_attn") for x in "qkvo"} | {"ffn.0", "ffn.2"}
    alpha = state["diffusion_model.blocks.1.cross_attn.o.alpha"]
    assert alpha.shape == () and alpha.dtype == torch.float32 and alpha.item() == ALPHA
    assert state["diffusion_model.blocks.1.ffn.2.lora_B.weight"].dtype == torch.bfloat16


def test_weights_trained_outside_lora_are_named_in_a_warning(trained, caplog):
    model = copy.deepcopy(trained)
    model.patch_embedding.requires_grad_(True)
    for block in model.blocks:
        block.attn1.norm_q.requires_grad_(True)
    with caplog.at_level(logging.WARNING, logger="animate.lora"):
        state = lora_state_dict(model, "diffusers")
    assert not any("patch_embedding" in key or "norm_q" in key for key in state)
    assert "leaves out 4 transformer weights" in caplog.text and "patch_embedding.weight" in caplog.text and "blocks.*.attn1.norm_q.weight" in caplog.text


def test_layers_without_an_original_wan_name_refuse_the_comfyui_layout(base):
    model = copy.deepcopy(base)
    model.blocks[0].extra = nn.Linear(24, 24)
    add_lora(model, rank=2, targets=["to_q", "extra"])
    with pytest.raises(ValueError, match="cannot read these layers back .*blocks.0.extra.*use layout=diffusers"):
        lora_state_dict(model, "comfyui")
    assert "transformer.blocks.0.extra.lora_A.weight" in lora_state_dict(model, "diffusers")
    with pytest.raises(ValueError, match="no LoRA layers"):
        lora_state_dict(base, "diffusers")


def test_lora_wraps_the_dit_blocks_only_as_the_official_loras_do():
    from tiny_systems import everanimate_on_animate

    system = everanimate_on_animate(lora=dict(rank=2))
    wrapped = {name.split(".lora_A")[0] for name, _ in system.backbone.transformer.named_parameters() if ".lora_A." in name}
    assert wrapped and all(name.startswith("blocks.") for name in wrapped)
    assert any(name.startswith("face_adapter.") for name, _ in system.backbone.transformer.named_modules())  # there, and left alone
    assert "blocks.0.attn1.to_q" in wrapped and "blocks.1.ffn.net.2" in wrapped


# ----- the command line ----------------------------------------------------------------------------------------------
def write_run(directory, rank: int):
    """A FramePrompt checkpoint on the shipped tiny base as experiments.fit writes it (trainable weights + run config), LoRA of ``rank``."""
    directory.mkdir()
    cfg = compose_config("frameprompt", [f"method.lora.rank={rank}", f"method.lora.alpha={ALPHA}", "method.metrics=null",
                                         "run_name=lora_export", f"paths.run_dir={directory}", "logger=none"])
    system = randomise_lora(build_system(cfg))
    keep = system.trainable_keys()
    state = {key: value for key, value in system.state_dict().items() if key in keep}
    torch.save({"run_config": OmegaConf.to_container(cfg, resolve=True), "state_dict": state, "global_step": 3}, directory / "last.ckpt")
    return directory / "last.ckpt"


def export_cli(*args: str):
    """``python -m experiments.export ARGS``, in this process."""
    return run(export, list(args), default_conf="export")


def test_export_cli_writes_the_adapter_that_diffusers_finds_in_a_directory(tmp_path):
    ckpt = write_run(tmp_path / "lora_run", rank=RANK)
    written = export_cli(f"ckpt={ckpt}", "what=lora", f"out={tmp_path / 'adapter'}", "dtype=float32")
    assert written == tmp_path / "adapter" / LORA_FILE and not list((tmp_path / "adapter").glob(".*.tmp"))
    comfy = export_cli(f"ckpt={ckpt}", "what=lora", "layout=comfyui", f"out={tmp_path / 'comfy.safetensors'}")
    assert comfy == tmp_path / "comfy.safetensors"
    stored = load_file(comfy)
    assert stored["diffusion_model.blocks.0.self_attn.q.lora_A.weight"].dtype == torch.float16 and stored["diffusion_model.blocks.0.self_attn.q.alpha"] == ALPHA
    # the directory loads into WanPipeline around the run's base transformer and gives the run's transformer output
    trained = load_run(str(ckpt))[0].backbone.transformer
    base = WanTransformer3DModel.from_config(trained.config)
    base.load_state_dict({key.replace(".base_layer", ""): value for key, value in trained.state_dict().items() if "lora_" not in key})
    pipe = pipeline(base.eval())
    pipe.load_lora_weights(str(tmp_path / "adapter"))
    expected = velocity(trained)
    assert (velocity(base) - expected).abs().max() > 1e-2
    torch.testing.assert_close(velocity(pipe.transformer), expected, rtol=1e-5, atol=1e-5)


def test_export_cli_refuses_a_full_fine_tune_and_wrong_layouts(tmp_path, capsys):
    ckpt = write_run(tmp_path / "full_run", rank=0)
    cases = {
        (f"ckpt={ckpt}", "what=lora", f"out={tmp_path / 'x'}"): f"error: what=lora: {ckpt} has no LoRA adapter (method.lora.rank was 0: a full fine-tune); export it with what=merged",
        (f"ckpt={ckpt}", "what=lora", "layout=original", "out=x"): "error: layout=original with what=lora: use one of diffusers, comfyui (comfyui is the original Wan layout of a LoRA)",
        (f"ckpt={ckpt}", "layout=comfyui", "out=x"): "error: layout=comfyui with what=merged: use one of diffusers, original",
        (f"ckpt={ckpt}", "what=adapter", "out=x"): "error: what=adapter: use one of merged, lora, checkpoint",
        (f"ckpt={ckpt}", "what=lora", "out=x.pth"): f"error: out=x.pth: a LoRA export is one safetensors file: out=FILE.safetensors, or out=DIR for DIR/{LORA_FILE}",
    }
    for args, message in cases.items():
        with pytest.raises(SystemExit) as exit:
            export_cli(*args)
        assert exit.value.code == 2 and capsys.readouterr().err.strip().splitlines()[-1] == message
    assert not (tmp_path / "x").exists()
