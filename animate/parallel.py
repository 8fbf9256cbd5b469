"""How the Wan backbone is split over devices: FSDP's wrapping units.

The packed forward (:mod:`animate.backbone`) runs a block's parts itself (norms, self-attention,
cross-attention, feed-forward) rather than the block's ``forward``, so FSDP units are the modules
whose ``forward`` it calls: each attention and each feed-forward (diffusers' ``WanAttention`` and
``FeedForward``). FSDP gathers a unit's weights when its forward runs, in the block loop and again
when block checkpointing recomputes it; the weights used outside any unit (the blocks' modulation
tables, embedders, output head, a method's own modules) stay in the root unit, gathered for the
whole step.
"""

from __future__ import annotations

import torch
from lightning.pytorch.strategies import FSDPStrategy
from torch import nn


def wan_fsdp_units() -> set[type[nn.Module]]:
    """The module classes FSDP wraps one by one: the modules whose ``forward`` the block loop calls."""
    from diffusers.models.attention import FeedForward
    from diffusers.models.transformers.transformer_wan import WanAttention

    return {WanAttention, FeedForward}


def wan_fsdp_wrap_policy():
    """A ``ModuleWrapPolicy`` over :func:`wan_fsdp_units` (``trainer.strategy.auto_wrap_policy``)."""
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    return ModuleWrapPolicy(wan_fsdp_units())



class AnyDeviceFSDPStrategy(FSDPStrategy):
    """Lightning's ``FSDPStrategy``, also on CPU: torch's FSDP runs there with gloo when told the device, while Lightning
    refuses its exact class on a CPU accelerator and passes no device. The CPU smoke run of the sharded configuration
    (conf/trainer/fsdp_cpu.yaml); on GPUs it is Lightning's class unchanged."""

    def _setup_model(self, model: nn.Module) -> nn.Module:
        if self.root_device.type != "cpu":
            return super()._setup_model(model)
        from torch.distributed.fsdp import FullyShardedDataParallel

        return FullyShardedDataParallel(module=model, cpu_offload=self.cpu_offload, mixed_precision=self.mixed_precision_config,
                                        sharding_strategy=self.sharding_strategy, device_id=torch.device("cpu"), **self.kwargs)
