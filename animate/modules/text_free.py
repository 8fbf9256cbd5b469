"""A backbone DiT block without text: what One-to-All's Reference Extractor and pose branches stack."""

from __future__ import annotations

import copy

from torch import Tensor, nn

from animate import diffusers_wan as wan
from animate.backbone import block_forward


class TextFreeBlock(nn.Module):
    """A copy of a Wan block minus its text cross-attention, with diffusers' default self-attention processor.

    Its modulation comes with each call (per frame, as the backbone's blocks get it) or, for a
    clean input with no timestep (a reference image), from a learned constant (6, D) that starts
    at the backbone's t = 0 modulation (``modulation``).
    """

    def __init__(self, block: nn.Module, modulation: Tensor | None = None):
        super().__init__()
        self.block = wan.strip_cross_attention(copy.deepcopy(block))
        wan.set_self_attention_processor(self.block, wan.self_attention_processor())
        self.modulation = None if modulation is None else nn.Parameter(modulation.detach().clone().float().view(1, 6, -1))  # (1, 6, D)

    def forward(self, hidden_states: Tensor, rotary_emb: tuple[Tensor, Tensor], modulation: Tensor | None = None) -> Tensor:
        """(B, L, D) tokens, RoPE (B, L, 1, head_dim), modulation (B, F, 6, D) or the learned one -> (B, L, D)."""
        if modulation is None:
            if self.modulation is None:
                raise ValueError("this text-free block has no learned modulation: pass the timestep modulation")
            modulation = self.modulation[:, None].expand(hidden_states.shape[0], -1, -1, -1)  # (B, 1, 6, D): one "frame", shared by every token
        return block_forward(self.block, hidden_states, None, modulation, rotary_emb)


def zero_linear(dim: int) -> nn.Linear:
    """A (dim -> dim) projection that starts at zero: a new input leaves the backbone unchanged at initialisation."""
    layer = nn.Linear(dim, dim)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer
