"""A backbone DiT block without text: what One-to-All's Reference Extractor and pose self-attention stack."""

from __future__ import annotations

import copy

from torch import Tensor, nn

from animate import diffusers_wan as wan


class TextFreeBlock(nn.Module):
    """A copy of a Wan block minus its text cross-attention, run at a learned constant modulation.

    Its input is clean (a reference image, pose features), so instead of a timestep it carries the
    modulation (6, D) it starts from: the backbone's at t = 0. The copy keeps diffusers' default
    self-attention processor whatever the source block runs.
    """

    def __init__(self, block: nn.Module, modulation: Tensor):
        super().__init__()
        self.block = wan.strip_cross_attention(copy.deepcopy(block))
        wan.set_self_attention_processor(self.block, wan.self_attention_processor())
        self.modulation = nn.Parameter(modulation.detach().clone().float().view(1, 6, -1))  # (1, 6, D)

    def forward(self, hidden_states: Tensor, rotary_emb: tuple[Tensor, Tensor]) -> Tensor:
        """(B, L, D) tokens, RoPE (B, L, 1, head_dim) -> (B, L, D)."""
        modulation = self.modulation.unsqueeze(0)  # (1, 1, 6, D): one "frame", shared by every token
        shift, scale, gate, c_shift, c_scale, c_gate = (m[:, 0] for m in wan.block_modulation(self.block, modulation))  # (1, 1, D)
        normed = (wan.self_attention_norm(self.block, hidden_states) * (1 + scale) + shift).type_as(hidden_states)
        attn = wan.self_attention(self.block, normed, None, rotary_emb)
        hidden_states = (hidden_states.float() + attn.float() * gate).type_as(hidden_states)
        normed = (wan.feed_forward_norm(self.block, hidden_states) * (1 + c_scale) + c_shift).type_as(hidden_states)
        return (hidden_states.float() + wan.feed_forward(self.block, normed).float() * c_gate).type_as(hidden_states)


def zero_linear(dim: int) -> nn.Linear:
    """A (dim -> dim) projection that starts at zero: a new input leaves the backbone unchanged at initialisation."""
    layer = nn.Linear(dim, dim)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer
