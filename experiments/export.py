"""Export a run's trained transformer as standalone weights: ``python -m experiments.export ckpt=RUN/last.ckpt out=DIR``.

``what=merged`` (default): the result loads through ``backbone.transformer.path`` exactly as a
downloaded Wan checkpoint does (:func:`animate.weights.load_transformer`), in diffusers or original
Wan layout, cast to ``dtype``, with a sidecar that says what the network predicts
(``backbone.prediction``: velocity or sample). LoRA adapters are merged first, so the export is a
plain Wan transformer.

``what=lora``: a LoRA run's adapter alone, one small safetensors file for the base model it was
trained on: ``layout=diffusers`` for ``WanPipeline.load_lora_weights`` (``out=DIR`` writes
``DIR/pytorch_lora_weights.safetensors``, the name diffusers looks for), ``layout=comfyui`` for
ComfyUI's LoRA loader (original Wan names with ``.alpha``; diffusers reads it too).

``what=checkpoint``: a compact run checkpoint to share or ship (``out=FILE.ckpt``): the weights the
run trained (what differs from its base, as a run's checkpoint holds them) cast to ``dtype``, its
run config with this machine's cache and run paths made portable again, and its step; no
optimizer state. ``experiments.generate ckpt=FILE`` (or ``ckpt=asset:NAME`` for one shipped in
``animate/assets``) generates from it as from the run's own checkpoint.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import torch
from omegaconf import DictConfig
from safetensors.torch import save_file
from torch import nn

from animate.backbone import prediction_file
from animate.lora import LORA_LAYOUTS, has_lora, lora_metadata, lora_state_dict, merged_state_dict
from animate.weights import kept_in_float32, save_diffusers, save_original_layout
from common.files import atomic_path, atomic_write_json
from experiments.cli import UsageError, run
from experiments.prediction import load_run, read_run_checkpoint

log = logging.getLogger(__name__)

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
LAYOUTS = {"merged": ("diffusers", "original"), "lora": LORA_LAYOUTS, "checkpoint": ("lightning",)}  # what -> the layouts it is written in
LORA_FILE = "pytorch_lora_weights.safetensors"  # the name diffusers' load_lora_weights(DIR) picks
TRANSFORMER_PREFIX = "backbone.transformer."


def plain_transformer(transformer: nn.Module) -> nn.Module:
    """A copy of ``transformer`` without LoRA layers: adapters folded into the weights."""
    if not has_lora(transformer):
        return copy.deepcopy(transformer)
    plain = type(transformer).from_config(transformer.config)
    plain.load_state_dict(merged_state_dict(transformer))
    return plain


def cast_for_export(transformer: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Cast the weights to ``dtype``, except the modules the model class keeps in float32 (norms, time embedding)."""
    for name, tensor in transformer.state_dict(keep_vars=True).items():
        if tensor.is_floating_point() and not kept_in_float32(transformer, name):
            tensor.data = tensor.data.to(dtype)
    return transformer


def export(cfg: DictConfig) -> Path:
    """Write the checkpoint's transformer (``what=merged``) or its LoRA adapter (``what=lora``) to ``cfg.out``; returns the written path."""
    if cfg.dtype not in DTYPES:
        raise UsageError(f"dtype={cfg.dtype}: use one of {', '.join(DTYPES)}")
    if cfg.what not in LAYOUTS:
        raise UsageError(f"what={cfg.what}: use one of {', '.join(LAYOUTS)}")
    if cfg.what == "checkpoint":
        return export_checkpoint(cfg, Path(cfg.out))
    if cfg.layout not in LAYOUTS[cfg.what]:
        hint = " (comfyui is the original Wan layout of a LoRA)" if cfg.what == "lora" and cfg.layout == "original" else ""
        raise UsageError(f"layout={cfg.layout} with what={cfg.what}: use one of {', '.join(LAYOUTS[cfg.what])}{hint}")
    out = lora_file(cfg.out) if cfg.what == "lora" else Path(cfg.out)
    system, _, checkpoint = load_run(cfg.ckpt)
    if cfg.what == "lora":
        return export_lora(cfg, system, checkpoint, out)
    transformer = cast_for_export(plain_transformer(system.backbone.transformer), DTYPES[cfg.dtype])
    written = save_diffusers(transformer, out) if cfg.layout == "diffusers" else save_original_layout(transformer, out)
    # what the weights predict (velocity or x0) travels with them; load_backbone checks it against the config
    atomic_write_json(prediction_file(written), {"prediction": system.backbone.prediction})
    print(f"wrote the transformer of {cfg.ckpt} (step {checkpoint.get('global_step')}) to {written} as {cfg.layout} {cfg.dtype}")
    return written


def portable_config(run_config: dict) -> dict:
    """``run_config`` with the paths under its cache and run directories written relative to them again (resolved at load time)."""
    paths = run_config.get("paths", {})
    prefixes = [(str(paths[key]).rstrip("/"), f"${{paths.{key}}}") for key in ("run_dir", "cache") if paths.get(key)]

    def portable(value):
        """One config value with machine paths replaced."""
        if isinstance(value, dict):
            return {key: portable(item) for key, item in value.items()}
        if isinstance(value, list):
            return [portable(item) for item in value]
        if isinstance(value, str):
            for prefix, reference in prefixes:
                if value == prefix or value.startswith(prefix + "/"):
                    return reference + value[len(prefix):]
        return value

    config = portable({key: value for key, value in run_config.items() if key != "paths"})
    return config | {"paths": {"cache": "${oc.env:ANIMATE_CACHE,.cache}", "run_dir": "."}}


def export_checkpoint(cfg: DictConfig, out: Path) -> Path:
    """Write the run's trained weights in ``cfg.dtype``, its portable run config and step to ``out``, atomically; returns ``out``."""
    if out.suffix != ".ckpt":
        raise UsageError(f"out={cfg.out}: what=checkpoint writes one file, name it FILE.ckpt")
    checkpoint = read_run_checkpoint(cfg.ckpt)
    dtype = DTYPES[cfg.dtype]
    state = {key: value.to(dtype) if value.is_floating_point() else value for key, value in checkpoint["state_dict"].items()}
    compact = {"state_dict": state, "run_config": portable_config(checkpoint["run_config"]), "global_step": checkpoint.get("global_step"),
               "exported_from": str(cfg.ckpt)}
    with atomic_path(out) as tmp:
        torch.save(compact, tmp)
    size = out.stat().st_size / 2**20
    print(f"wrote the trained weights of {cfg.ckpt} (step {checkpoint.get('global_step')}, {len(state)} tensors, {size:.1f} MiB) to {out} as {cfg.dtype}")
    return out


def lora_file(out: str) -> Path:
    """Where a LoRA export goes: ``out`` itself when it names a .safetensors file, else ``out/pytorch_lora_weights.safetensors``."""
    path = Path(out)
    if path.suffix == ".safetensors":
        return path
    if path.suffix in (".pt", ".pth", ".bin", ".ckpt") or path.is_file():
        raise UsageError(f"out={out}: a LoRA export is one safetensors file: out=FILE.safetensors, or out=DIR for DIR/{LORA_FILE}")
    return path / LORA_FILE


def export_lora(cfg: DictConfig, system: nn.Module, checkpoint: dict, out: Path) -> Path:
    """Write the run's LoRA adapter alone to ``out`` in ``cfg.layout``, atomically; returns ``out``."""
    transformer = system.backbone.transformer
    if not has_lora(transformer):
        raise UsageError(f"what=lora: {cfg.ckpt} has no LoRA adapter (method.lora.rank was 0: a full fine-tune); export it with what=merged")
    # the transformer weights the run changed besides LoRA: the checkpoint holds exactly the trained (and init_from) weights
    left_out = [key.removeprefix(TRANSFORMER_PREFIX) for key in checkpoint["state_dict"] if key.startswith(TRANSFORMER_PREFIX) and "lora_" not in key]
    try:
        state = lora_state_dict(transformer, cfg.layout, DTYPES[cfg.dtype], left_out=left_out)
        header = lora_metadata(transformer) if cfg.layout == "diffusers" else {"format": "pt"}
    except ValueError as error:  # an adapter the layout cannot carry (DoRA, a layer without an original Wan name)
        raise UsageError(f"what=lora layout={cfg.layout}: {error}") from None
    with atomic_path(out) as tmp:
        save_file(state, tmp, metadata=header)
    others = sorted({key.removeprefix("backbone.").split(".")[0] for key in checkpoint["state_dict"] if not key.startswith(TRANSFORMER_PREFIX)})
    if others:  # a pipeline has no place for them: the adapter alone is the transformer's share of what the run trained
        log.warning("the LoRA export leaves out the method's own trained modules outside the transformer: %s", ", ".join(others))
    if system.backbone.prediction != "velocity":
        log.warning("this run's transformer predicts the %s, not the velocity that diffusers' and ComfyUI's Wan samplers expect", system.backbone.prediction)
    layers = sum(key.endswith(".lora_A.weight") for key in state)
    print(f"wrote the LoRA adapter of {cfg.ckpt} (step {checkpoint.get('global_step')}, {layers} layers) to {out} as {cfg.layout} {cfg.dtype}")
    return out


if __name__ == "__main__":
    run(export, default_conf="export")
