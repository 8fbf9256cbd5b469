"""The one place that reaches into diffusers' Wan internals; everything else calls these functions.

The packed forward (:mod:`animate.backbone`) runs diffusers' own Wan modules (patch embedding,
condition embedder, blocks' norms, attentions and feed-forward, output head) in its own loop, so
it depends on their attribute names and call signatures. Those dependencies are listed here and
checked against the tested diffusers range at import: an unsupported diffusers is a one-line
ImportError, not an AttributeError deep inside a forward.
"""

from __future__ import annotations

from importlib.metadata import version

from packaging.specifiers import SpecifierSet
from packaging.version import Version
from torch import Tensor, nn

SUPPORTED_DIFFUSERS = SpecifierSet(">=0.35,<0.43")  # keep equal to pyproject.toml's pin; tested: 0.35.2, 0.42.1
TIMESTEP_SCALE = 1000.0  # Wan's timestep embedding takes t in [0, 1000]


def check_diffusers_version(installed: str | None = None) -> str:
    """The installed diffusers version; ImportError naming the supported range if outside it."""
    installed = installed or version("diffusers")
    if Version(installed) not in SUPPORTED_DIFFUSERS:
        raise ImportError(
            f"diffusers {installed} is not supported: animate-dit's Wan adapter (animate/diffusers_wan.py) is tested "
            f"with diffusers{SUPPORTED_DIFFUSERS}; install it with pip install 'diffusers{SUPPORTED_DIFFUSERS}'"
        )
    return installed


check_diffusers_version()


def rope_tables(rope: nn.Module) -> tuple[tuple[Tensor, Tensor, Tensor], tuple[Tensor, Tensor, Tensor]]:
    """Wan's 3D RoPE tables split into (time, height, width) parts: cos parts, sin parts, each (max_len, dim_k)."""
    split = [rope.t_dim, rope.h_dim, rope.w_dim]
    return rope.freqs_cos.split(split, dim=1), rope.freqs_sin.split(split, dim=1)


def patchify(model: nn.Module, latents: Tensor) -> Tensor:
    """Patch-embed (B, C, F, h, w) latents to tokens (B, L, D)."""
    embedding = model.patch_embedding
    return embedding(latents.to(embedding.weight.dtype)).flatten(2).transpose(1, 2).contiguous()


def embed_conditions(model: nn.Module, t: Tensor, context: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-frame time t (B, F) in [0, 1] and text (B, S, text_dim) -> temb (B, F, D), modulation (B, F, 6, D), context (B, S, D).

    Uses the condition embedder's per-token path (Wan2.2 ``timestep_seq_len``), once per frame.
    """
    b, f = t.shape
    temb, timestep_proj, context, _ = model.condition_embedder(t.flatten() * TIMESTEP_SCALE, context, None, timestep_seq_len=f)
    return temb, timestep_proj.unflatten(2, (6, -1)).float(), context


def block_modulation(block: nn.Module, modulation: Tensor) -> tuple[Tensor, ...]:
    """A block's (shift, scale, gate, c_shift, c_scale, c_gate), each (B, F, 1, D), from modulation (B, F, 6, D)."""
    return (block.scale_shift_table.unsqueeze(0) + modulation).unsqueeze(2).unbind(3)


def self_attention_norm(block: nn.Module, hidden_states: Tensor) -> Tensor:
    """The block's norm before self-attention (float32, no affine)."""
    return block.norm1(hidden_states.float())


def self_attention(block: nn.Module, hidden_states: Tensor, attention_mask: Tensor | None, rotary_emb: tuple[Tensor, Tensor]) -> Tensor:
    """The block's self-attention through its attention processor."""
    return block.attn1(hidden_states, None, attention_mask, rotary_emb)


def cross_attention(block: nn.Module, hidden_states: Tensor, context: Tensor) -> Tensor:
    """The block's text cross-attention, with its optional norm, as a residual update."""
    normed = block.norm2(hidden_states.float()).type_as(hidden_states)
    return block.attn2(normed, context, None, None)


def feed_forward_norm(block: nn.Module, hidden_states: Tensor) -> Tensor:
    """The block's norm before the feed-forward (float32, no affine)."""
    return block.norm3(hidden_states.float())


def feed_forward(block: nn.Module, hidden_states: Tensor) -> Tensor:
    """The block's feed-forward."""
    return block.ffn(hidden_states)


def output_head(model: nn.Module, hidden_states: Tensor, temb: Tensor) -> Tensor:
    """Output norm with per-frame shift/scale from temb (B, F, D), then projection: (B, L, p*C)."""
    frames = temb.shape[1]
    shift, scale = (model.scale_shift_table.unsqueeze(0) + temb.unsqueeze(2)).unsqueeze(2).unbind(3)  # (B, F, 1, D)
    x = model.norm_out(hidden_states.float()).unflatten(1, (frames, -1)) * (1 + scale) + shift
    return model.proj_out(x.flatten(1, 2).type_as(hidden_states))


def patch_size(model: nn.Module) -> tuple[int, int, int]:
    """The transformer's (pt, ph, pw)."""
    return tuple(model.config.patch_size)


def new_transformer(**config) -> nn.Module:
    """A randomly initialised WanTransformer3DModel from keyword config."""
    from diffusers import WanTransformer3DModel

    config = {k: tuple(v) if isinstance(v, list) and k == "patch_size" else v for k, v in config.items()}
    return WanTransformer3DModel(**config)


def set_in_channels(transformer: nn.Module, patch_embedding: nn.Conv3d) -> None:
    """Install a widened patch embedding and record its input channels in the config."""
    transformer.patch_embedding = patch_embedding
    transformer.register_to_config(in_channels=patch_embedding.in_channels)
