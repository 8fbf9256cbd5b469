"""One-to-All's Hybrid Reference Fusion Attention, as a self-attention processor (diffusers' pattern).

    out = Attn(Q, K, V) + Attn(Q', K', V'),   Q' = RoPE(h Wq, f = 0),  K' = RoPE(r W'k, f = 0),  V' = r W'v

``h`` are the block's (normed, modulated) tokens, ``r`` the Reference Extractor's state for this
block (B, Lr, D) on one token frame; W'k, W'v (and K's RMS norm) are new, copied from the block's
W_k, W_v with V's bias at zero, so zero reference states add exactly nothing. RoPE with f = 0 is
Wan's 3D RoPE whose time channels do not rotate: the same maths as the official code's "2D RoPE"
(it rotates only the h/w channels of Q' and K'). ``query_rope="full"`` keeps Q's own frame index
in Q' (the paper's Fig. 13 ablation, which stops extrapolating past the training length). It is
Wan I2V's image cross-attention branch (``add_k_proj``, ``add_v_proj``) moved into self-attention
with position encodings. The processor is an ``nn.Module``: its weights live in the transformer
under ``blocks.i.attn1.processor``.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from animate import diffusers_wan as wan

QUERY_ROPES = ("frame0", "full")


def frame0_rope(rotary_emb: tuple[Tensor, Tensor], time_channels: int) -> tuple[Tensor, Tensor]:
    """RoPE tables with the time index forced to 0: the first ``time_channels`` of each head do not rotate."""
    cos, sin = rotary_emb
    cos, sin = cos.clone(), sin.clone()
    cos[..., :time_channels] = 1.0
    sin[..., :time_channels] = 0.0
    return cos, sin


class HybridReferenceAttnProcessor(nn.Module):
    """Self-attention plus attention to this block's reference states, both through the block's W_q."""

    _attention_backend = None  # set by diffusers' set_attention_backend like its own processors'
    _parallel_config = None

    def __init__(self, attn: nn.Module, feature_index: int, time_channels: int, query_rope: str = "frame0"):
        super().__init__()
        if query_rope not in QUERY_ROPES:
            raise ValueError(f"method.query_rope={query_rope!r}: use one of {', '.join(QUERY_ROPES)}")
        self.feature_index = feature_index  # which of the extractor's features this block reads
        self.time_channels = time_channels  # head channels that carry RoPE's time part
        self.query_rope = query_rope
        self.to_k_ref = copy.deepcopy(attn.to_k)  # W'k
        self.to_v_ref = copy.deepcopy(attn.to_v)  # W'v
        self.norm_k_ref = copy.deepcopy(attn.norm_k)
        with torch.no_grad():
            self.to_v_ref.bias.zero_()  # zero reference states -> zero values -> no change

    def __call__(
        self,
        attn: nn.Module,
        hidden_states: Tensor,  # (B, L, D)
        encoder_hidden_states: Tensor | None = None,
        attention_mask: Tensor | None = None,
        rotary_emb: tuple[Tensor, Tensor] | None = None,  # (B, L, 1, head_dim) each
        reference_states: Tensor | None = None,  # (B, M + 1, Lr, D): the extractor's features; this block reads [:, feature_index]
    ) -> Tensor:
        query, key, value = wan.self_attention_heads(attn, hidden_states)  # (B, L, heads, d)
        rope_query = query
        if rotary_emb is not None:
            query, key = wan.apply_rotary_emb(query, *rotary_emb), wan.apply_rotary_emb(key, *rotary_emb)
        out = wan.attention(query, key, value, attention_mask, self._attention_backend)  # (B, L, D)
        if reference_states is not None:
            out = out + self.reference_attention(attn, rope_query, reference_states[:, self.feature_index], rotary_emb)
        return wan.attention_output(attn, out)

    def reference_attention(self, attn: nn.Module, query: Tensor, reference: Tensor, rotary_emb: tuple[Tensor, Tensor] | None) -> Tensor:
        """Attn(Q', K', V') (B, L, D) of un-rotated queries (B, L, heads, d) over reference states (B, Lr, D)."""
        reference = reference.to(query.dtype)
        key = self.norm_k_ref(self.to_k_ref(reference)).unflatten(2, (attn.heads, -1))  # (B, Lr, heads, d)
        value = self.to_v_ref(reference).unflatten(2, (attn.heads, -1))
        if rotary_emb is not None:
            lr = reference.shape[1]
            frame0 = frame0_rope(rotary_emb, self.time_channels)
            query = wan.apply_rotary_emb(query, *(frame0 if self.query_rope == "frame0" else rotary_emb))
            key = wan.apply_rotary_emb(key, frame0[0][:, :lr], frame0[1][:, :lr])  # the reference's grid = any frame's grid at f = 0
        return wan.attention(query, key, value, None, self._attention_backend)


def install_hrfa(transformer: nn.Module, feature_of_block: Sequence[int] | None = None, query_rope: str = "frame0") -> list[HybridReferenceAttnProcessor]:
    """Give every block of a Wan transformer an HRFA self-attention processor reading feature ``feature_of_block[i]`` (default: its own index)."""
    time_channels = wan.rope_tables(transformer.rope)[0][0].shape[1]
    feature_of_block = list(feature_of_block) if feature_of_block is not None else list(range(len(transformer.blocks)))
    processors = []
    for block, feature in zip(transformer.blocks, feature_of_block, strict=True):
        processor = HybridReferenceAttnProcessor(block.attn1, feature, time_channels, query_rope)
        wan.set_self_attention_processor(block, processor)
        processors.append(processor)
    return processors
