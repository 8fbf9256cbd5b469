"""LoRA on the Wan transformer through peft: inject, merge for export, or export the adapter alone.

The adapter alone (:func:`lora_state_dict`) comes in the two layouts Wan LoRAs are shared in:

* ``diffusers``: ``transformer.blocks.0.attn1.to_q.lora_A.weight``, what ``WanPipeline.load_lora_weights``
  reads; alpha travels in the safetensors header as diffusers' LoRA adapter metadata (:func:`lora_metadata`);
* ``comfyui``: the original Wan (Kijai / ComfyUI) names, ``diffusion_model.blocks.0.self_attn.q.lora_A.weight``
  with a ``diffusion_model.blocks.0.self_attn.q.alpha`` scalar per layer; diffusers reads it too.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

log = logging.getLogger(__name__)

# diffusers' names for what the official code calls q, k, v, o, ffn.0, ffn.2 (self- and cross-attention)
WAN_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "ffn.net.0.proj", "ffn.net.2")


def block_targets(targets: Sequence[str]) -> str:
    """peft's ``target_modules`` as a regex: layers named ``targets`` inside the DiT blocks (``blocks.N.``) only.

    The official LoRAs cover the DiT blocks alone; a plain suffix list would also wrap same-named layers
    elsewhere, such as Wan2.2-Animate's ``face_adapter`` projections or a method's own modules.
    """
    names = "|".join(re.escape(target) for target in targets)
    return rf"blocks\.\d+\.(?:.*\.)?(?:{names})"


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
        target_modules=block_targets(targets),
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


# ----- the adapter alone ---------------------------------------------------------------------------------------------
LORA_LAYOUTS = ("diffusers", "comfyui")
DIFFUSERS_PREFIX = "transformer."  # WanLoraLoaderMixin.transformer_name
COMFYUI_PREFIX = "diffusion_model."  # what diffusers' _convert_non_diffusers_wan_lora_to_diffusers strips (ComfyUI's model prefix)
_COMFYUI_ADVICE = "the comfyui layout covers the Wan transformer's own linear layers (attention, FFN, embedders, head): use layout=diffusers"


@dataclass(frozen=True)
class Adapter:
    """One LoRA layer: its module's diffusers name, down (r, in) and up (out, r) weights, and alpha (the update is up @ down * alpha / r)."""

    name: str
    down: torch.Tensor
    up: torch.Tensor
    alpha: float

    @property
    def rank(self) -> int:
        """The layer's rank r."""
        return self.down.shape[0]


def has_lora(module: nn.Module) -> bool:
    """Whether peft injected LoRA layers into ``module``."""
    return any("lora_" in name for name, _ in module.named_parameters())


def adapters(transformer: nn.Module) -> list[Adapter]:
    """The LoRA layers peft injected into ``transformer``, in module order (linear layers, one adapter, no DoRA or LoRA bias)."""
    from peft.tuners.lora import LoraLayer

    found = []
    for name, module in transformer.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        if len(module.active_adapters) != 1:
            raise ValueError(f"{name}: {len(module.active_adapters)} active LoRA adapters {module.active_adapters}; export one at a time")
        (adapter,) = module.active_adapters
        if module.use_dora.get(adapter) or getattr(module, "lora_bias", {}).get(adapter) or not isinstance(module.get_base_layer(), nn.Linear):
            raise ValueError(f"{name}: only plain LoRA on linear layers exports (no DoRA, LoRA bias or convolution)")
        down, up = module.lora_A[adapter].weight.detach(), module.lora_B[adapter].weight.detach()  # (r, in), (out, r)
        alpha = module.lora_alpha[adapter]
        if not math.isclose(module.scaling[adapter], alpha / down.shape[0]):
            alpha = module.scaling[adapter] * down.shape[0]  # rsLoRA (alpha / sqrt r) or a rescaled adapter, as an alpha / r
        found.append(Adapter(name, down, up, float(alpha)))
    return found


def trained_outside_lora(transformer: nn.Module) -> list[str]:
    """The transformer's trainable weights that are not LoRA's (a widened patch embedding, a method's own projections)."""
    return [name for name, parameter in transformer.named_parameters() if parameter.requires_grad and "lora_" not in name]


def lora_state_dict(
    transformer: nn.Module, layout: str = "diffusers", dtype: torch.dtype | None = None, left_out: Iterable[str] | None = None
) -> dict[str, torch.Tensor]:
    """The LoRA adapter alone, in ``layout`` (``diffusers`` or ``comfyui``), cast to ``dtype``.

    Only LoRA weights go in: the transformer's other trained weights (``left_out``, by default the
    trainable non-LoRA parameters) have no place in a pipeline's LoRA, and a warning names them.
    Layers of modules the model class keeps in float32 stay float32, as in the merged export.

    ``diffusers``: alpha is not in the tensors; pass :func:`lora_metadata` as the safetensors header
    (diffusers >= 0.35 reads it; an older diffusers takes alpha = rank). ``comfyui``: a float32
    ``.alpha`` scalar per layer, which ComfyUI and diffusers' converter apply as alpha / rank on load.
    """
    if layout not in LORA_LAYOUTS:
        raise ValueError(f"layout={layout!r}: use one of {', '.join(LORA_LAYOUTS)}")
    found = adapters(transformer)
    if not found:
        raise ValueError(f"{type(transformer).__name__} has no LoRA layers (a full fine-tune): export the merged transformer instead")
    warn_left_out(trained_outside_lora(transformer) if left_out is None else left_out)
    from animate.weights import kept_in_float32

    state: dict[str, torch.Tensor] = {}
    for adapter in found:
        cast = dtype if dtype is not None and not kept_in_float32(transformer, adapter.name) else None
        prefix = DIFFUSERS_PREFIX + adapter.name if layout == "diffusers" else COMFYUI_PREFIX + original_module_name(adapter.name)
        state[f"{prefix}.lora_A.weight"] = adapter.down.to(dtype=cast, device="cpu", copy=True).contiguous()  # (r, in)
        state[f"{prefix}.lora_B.weight"] = adapter.up.to(dtype=cast, device="cpu", copy=True).contiguous()  # (out, r)
        if layout == "comfyui":
            state[f"{prefix}.alpha"] = torch.tensor(adapter.alpha, dtype=torch.float32)  # ()
    if layout == "comfyui":
        _check_comfyui_names(state, found)
    return state


def lora_metadata(transformer: nn.Module) -> dict[str, str]:
    """The safetensors header diffusers' ``save_lora_weights(transformer_lora_adapter_metadata=...)`` writes: the LoraConfig with r and alpha.

    ``load_lora_weights`` builds the adapter's LoraConfig from it, so a LoRA trained with alpha != rank
    loads with its scale alpha / r. Ranks or alphas that differ between layers go in rank_pattern / alpha_pattern.
    """
    found = adapters(transformer)
    if not found:
        raise ValueError(f"{type(transformer).__name__} has no LoRA layers")
    rank = Counter(a.rank for a in found).most_common(1)[0][0]
    alpha = Counter(a.alpha for a in found).most_common(1)[0][0]
    config = {
        "r": rank,
        "lora_alpha": alpha,
        "rank_pattern": {a.name: a.rank for a in found if a.rank != rank},
        "alpha_pattern": {a.name: a.alpha for a in found if a.alpha != alpha},
        "target_modules": [a.name for a in found],
        "use_dora": False,
        "lora_bias": False,
    }
    packed = {DIFFUSERS_PREFIX + key: value for key, value in config.items()}  # diffusers' _pack_dict_with_prefix
    return {"format": "pt", "lora_adapter_metadata": json.dumps(packed, indent=2, sort_keys=True)}


def original_module_name(name: str) -> str:
    """A diffusers module name of the Wan transformer under its original Wan name (blocks.0.attn1.to_q -> blocks.0.self_attn.q)."""
    from animate.weights import _transformer_key_to_original  # the one table of Wan's names, checked against diffusers' converter

    return _transformer_key_to_original(f"{name}.weight").removesuffix(".weight")


def warn_left_out(names: Iterable[str]) -> None:
    """Log which trained transformer weights a LoRA export leaves out (block indices folded: blocks.*.x)."""
    names = list(names)
    if not names:
        return
    grouped = list(dict.fromkeys(re.sub(r"^blocks\.\d+\.", "blocks.*.", name) for name in names))
    shown = ", ".join(grouped[:8]) + (f" and {len(grouped) - 8} more" if len(grouped) > 8 else "")
    log.warning(
        "the LoRA export leaves out %d transformer weights trained outside LoRA, which a pipeline's base transformer does not have: %s "
        "(export what=merged for a transformer with them)", len(names), shown,
    )


def _check_comfyui_names(state: dict[str, torch.Tensor], found: list[Adapter]) -> None:
    """Raise unless diffusers' own converter reads the comfyui-layout ``state`` back onto the adapter's modules."""
    from diffusers.loaders.lora_conversion_utils import _convert_non_diffusers_wan_lora_to_diffusers

    expected = {f"{DIFFUSERS_PREFIX}{a.name}.{part}.weight" for a in found for part in ("lora_A", "lora_B")}
    # weights on the meta device: names and shapes are all the check needs, and the converter scales some of them in place
    shapes = {key: value if key.endswith(".alpha") else torch.empty_like(value, device="meta") for key, value in state.items()}
    try:
        back = set(_convert_non_diffusers_wan_lora_to_diffusers(shapes))
    except (ValueError, KeyError) as error:
        raise ValueError(f"diffusers' Wan LoRA converter cannot read these layers back under original Wan names ({str(error)[:300]}); {_COMFYUI_ADVICE}") from None
    if back != expected:
        differ = sorted(expected ^ back)
        raise ValueError(f"diffusers' Wan LoRA converter reads these layers back under other names (e.g. {', '.join(differ[:3])}); {_COMFYUI_ADVICE}")

