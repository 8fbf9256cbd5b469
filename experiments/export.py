"""Export a run's trained transformer as standalone weights: ``python -m experiments.export ckpt=RUN/last.ckpt out=DIR``.

The result loads through ``backbone.transformer.path`` exactly as a downloaded Wan checkpoint does
(:func:`animate.weights.load_transformer`), in diffusers or original Wan layout, cast to ``dtype``,
with a sidecar that says what the network predicts (``backbone.prediction``: velocity or sample).
LoRA adapters are merged first, so the export is a plain Wan transformer.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import nn

from animate.backbone import prediction_file
from animate.lora import merged_state_dict
from animate.weights import save_diffusers, save_original_layout
from common.files import atomic_write_json
from experiments.cli import UsageError, run
from experiments.prediction import load_run

log = logging.getLogger(__name__)

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
LAYOUTS = ("diffusers", "original")


def plain_transformer(transformer: nn.Module) -> nn.Module:
    """A copy of ``transformer`` without LoRA layers: adapters folded into the weights."""
    if not any("lora_" in name for name, _ in transformer.named_parameters()):
        return copy.deepcopy(transformer)
    plain = type(transformer).from_config(transformer.config)
    plain.load_state_dict(merged_state_dict(transformer))
    return plain


def cast_for_export(transformer: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Cast the weights to ``dtype``, except the modules the model class keeps in float32 (norms, time embedding)."""
    keep = set(getattr(transformer, "_keep_in_fp32_modules", None) or ())
    for name, tensor in transformer.state_dict(keep_vars=True).items():
        if tensor.is_floating_point() and not keep.intersection(name.split(".")):
            tensor.data = tensor.data.to(dtype)
    return transformer


def export(cfg: DictConfig) -> Path:
    """Write the checkpoint's transformer to ``cfg.out``; returns the written path."""
    if cfg.dtype not in DTYPES:
        raise UsageError(f"dtype={cfg.dtype}: use one of {', '.join(DTYPES)}")
    if cfg.layout not in LAYOUTS:
        raise UsageError(f"layout={cfg.layout}: use one of {', '.join(LAYOUTS)}")
    system, _, checkpoint = load_run(cfg.ckpt)
    transformer = cast_for_export(plain_transformer(system.backbone.transformer), DTYPES[cfg.dtype])
    out = Path(cfg.out)
    written = save_diffusers(transformer, out) if cfg.layout == "diffusers" else save_original_layout(transformer, out)
    # what the weights predict (velocity or x0) travels with them; load_backbone checks it against the config
    atomic_write_json(prediction_file(written), {"prediction": system.backbone.prediction})
    print(f"wrote the transformer of {cfg.ckpt} (step {checkpoint.get('global_step')}) to {written} as {cfg.layout} {cfg.dtype}")
    return written


if __name__ == "__main__":
    run(export, default_conf="export")
