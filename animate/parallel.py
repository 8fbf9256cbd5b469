"""How the Wan backbone is split over devices: FSDP's wrapping units, context (sequence) parallel generation, and
sequential CPU offload for generation on a card too small for the weights.

The packed forward (:mod:`animate.backbone`) runs a block's parts itself (norms, self-attention,
cross-attention, feed-forward) rather than the block's ``forward``, so FSDP units are the modules
whose ``forward`` it calls: each attention and each feed-forward (diffusers' ``WanAttention`` and
``FeedForward``). FSDP gathers a unit's weights when its forward runs, in the block loop and again
when block checkpointing recomputes it; the weights used outside any unit (the blocks' modulation
tables, embedders, output head, a method's own modules) stay in the root unit, gathered for the
whole step.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, SingleDeviceStrategy
from lightning.pytorch.strategies.ddp import DDPStrategy
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


@dataclass
class ContextParallel:
    """Context (sequence) parallel generation: every rank holds a contiguous share of the latent frames' tokens.

    The block loop (:meth:`animate.backbone.WanBackbone.forward`) cuts the tokens, RoPE, per-frame modulation and token
    injections to this rank's frames; diffusers' attention dispatch runs each self-attention over the whole sequence
    (Ulysses: an all-to-all from sequence to head shards and back; ring: key/value shards passed around), cross-attention
    stays local, and the output head's tokens are gathered at the end. Made by :func:`enable_context_parallel`.
    """

    config: object  # diffusers' ParallelConfig, set up on the process group's mesh
    rank: int  # this process's place along the sequence
    size: int  # processes sharing one sequence
    group: object  # their process group

    def frames(self, total: int) -> slice:
        """This rank's latent frames of ``total`` (which the ranks must divide)."""
        if total % self.size:
            raise ValueError(f"context parallel over {self.size} processes needs the latent frames ({total}) to be a multiple of {self.size}")
        share = total // self.size
        return slice(self.rank * share, (self.rank + 1) * share)


def context_parallel_degree(cp: Mapping | None) -> int:
    """Processes that share each sequence under ``cp`` (``ulysses`` x ``ring``; 1: none, or no setting)."""
    cp = cp or {}
    return int(cp.get("ulysses", 1)) * int(cp.get("ring", 1))


def enable_context_parallel(backbone: nn.Module, ulysses_degree: int = 1, ring_degree: int = 1) -> ContextParallel:
    """Split every sequence of ``backbone`` over ``ulysses_degree x ring_degree`` processes of the initialised process group.

    Ulysses needs an all-to-all (NCCL; gloo on a CPU), and pads heads that its degree does not divide; ring needs a backend
    that returns the log-sum-exp (FlashAttention, cuDNN), so not PyTorch's plain SDPA. Self-attention processors must be
    diffusers' own (a method that installs its own, One-to-All's HRFA, is refused).
    """
    import torch.distributed as dist
    from diffusers.models._modeling_parallel import ContextParallelConfig, ParallelConfig
    from diffusers.models.transformers.transformer_wan import WanAttnProcessor
    from torch.distributed.device_mesh import init_device_mesh

    if not dist.is_initialized():
        raise RuntimeError("context parallel generation needs an initialised process group (torchrun, or trainer.devices > 1)")
    blocks = backbone.transformer.blocks
    foreign = {type(block.attn1.processor).__name__ for block in blocks if not isinstance(block.attn1.processor, WanAttnProcessor)}
    if foreign:
        raise ValueError(f"context parallel: the self-attention runs {sorted(foreign)}, not diffusers' WanAttnProcessor (One-to-All's HRFA "
                         f"has no sequence-parallel form yet)")
    heads = backbone.transformer.config.num_attention_heads
    # diffusers' "Ulysses anything" pads heads (and tokens) that do not divide evenly, e.g. the tiny default's 5 heads over 2
    cp = ContextParallelConfig(ulysses_degree=ulysses_degree, ring_degree=ring_degree, ulysses_anything=ulysses_degree > 1 and heads % ulysses_degree != 0)
    device_type = "cuda" if dist.get_backend() == "nccl" else "cpu"
    # on a CPU the mesh's groups are gloo named with their device ("cpu:gloo"), which diffusers' uneven Ulysses looks for
    override = {"ring": "cpu:gloo", "ulysses": "cpu:gloo"} if device_type == "cpu" else None
    mesh = init_device_mesh(device_type, (ring_degree, ulysses_degree), mesh_dim_names=("ring", "ulysses"), backend_override=override)
    config = ParallelConfig(context_parallel_config=cp)
    rank = dist.get_rank()
    config.setup(rank, dist.get_world_size(), torch.device(device_type, rank % max(1, torch.cuda.device_count())) if device_type == "cuda"
                 else torch.device("cpu"), mesh=mesh)
    for block in blocks:
        block.attn1.processor._parallel_config = config  # cross-attention (attn2) stays local: diffusers passes no config there
    flat = cp._flattened_mesh
    backbone.context_parallel = ContextParallel(config, flat.get_local_rank(), flat.size(), flat.get_group())
    return backbone.context_parallel


class BlockOffloadStrategy(SingleDeviceStrategy):
    """One device, with the backbone's blocks in (pinned) host memory: each block visits the device for its turn in the
    block loop (sequential CPU offload), so a card that cannot hold 14B in bf16 (28.6 GB) generates with one block's weights
    (0.7 GB) beside the rest. Everything else (embedders, head, the method's modules, VAE, image encoder) moves as usual.
    Slower by one host-to-device copy of the blocks per forward (about 1 s for 14B over PCIe 4)."""

    def model_to_device(self) -> None:
        backbone = self.lightning_module.backbone
        blocks = backbone.transformer.blocks
        backbone.transformer.blocks = nn.ModuleList()  # out of the way of the move
        try:
            self.model.to(self.root_device)
        finally:
            backbone.transformer.blocks = blocks
        if self.root_device.type == "cuda":
            for tensor in blocks.parameters():
                tensor.data = tensor.data.pin_memory()  # asynchronous copies
        backbone.offload_blocks = True


class AnyDeviceDeepSpeedStrategy(DeepSpeedStrategy):
    """Lightning's ``DeepSpeedStrategy``, also on CPU (``DS_ACCELERATOR=cpu``, gloo): Lightning refuses any accelerator but
    CUDA. The CPU smoke run of the ZeRO configuration (conf/trainer/deepspeed_cpu.yaml); on GPUs it is Lightning's class unchanged."""

    def setup_environment(self) -> None:
        if self.root_device.type == "cuda":
            return super().setup_environment()
        DDPStrategy.setup_environment(self)  # the process group, without the CUDA check

    def setup_distributed(self) -> None:
        if self.root_device.type == "cuda":
            return super().setup_distributed()
        from lightning.fabric.utilities.seed import reset_seed

        reset_seed()  # as Lightning's, without its check of CUDA device indices
        self.set_world_ranks()
        self._init_deepspeed_distributed()

    @property
    def root_device(self) -> torch.device:
        """On CPU the local rank as the device index, which ``deepspeed.initialize`` reads as its device rank (torch ignores it)."""
        device = super().root_device
        return torch.device("cpu", self.local_rank) if device.type == "cpu" else device
