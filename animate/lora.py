"""LoRA on the Wan transformer through peft: inject, merge for export."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

# diffusers' names for what the official code calls q, k, v, o, ffn.0, ffn.2 (self- and cross-attention)
WAN_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "ffn.net.0.proj", "ffn.net.2")


def add_lora(
    transformer: nn.Module,
    rank: int,
    alpha: float | None = None,
    targets: Sequence[str] = WAN_LORA_TARGETS,
    dropout: float = 0.0,
    init: str | bool = True,
) -> nn.Module:
    """Inject LoRA adapters into ``transformer`` in place; freezes the base weights."""
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(
        r=rank,
        lora_alpha=alpha if alpha is not None else rank,
        target_modules=list(targets),
        lora_dropout=dropout,
        init_lora_weights=init,
    )
    for parameter in transformer.parameters():
        parameter.requires_grad_(False)
    inject_adapter_in_model(config, transformer)
    if not any("lora_" in name for name, _ in transformer.named_parameters()):
        raise ValueError(f"no LoRA target matched: targets {list(targets)} are not module names in the transformer")
    return transformer


@torch.no_grad()
def merged_state_dict(transformer: nn.Module) -> dict[str, torch.Tensor]:
    """The transformer's weights with LoRA folded in, under the plain (diffusers) names."""
    from peft.tuners.lora import LoraLayer

    state: dict[str, torch.Tensor] = {}
    for name, module in transformer.named_modules():
        if isinstance(module, LoraLayer):
            base = module.get_base_layer()
            weight = base.weight.detach().clone()
            for adapter in module.active_adapters:
                weight += module.get_delta_weight(adapter).to(weight.dtype)
            state[f"{name}.weight"] = weight
            if base.bias is not None:
                state[f"{name}.bias"] = base.bias.detach().clone()
    for key, value in transformer.state_dict().items():
        if "lora_" in key or ".base_layer." in key:
            continue
        state.setdefault(key, value.detach().clone())
    return state
