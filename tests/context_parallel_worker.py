"""Run by tests/test_context_parallel.py under torchrun on 2 CPU processes (gloo): the same forward and the same sampled
clip with and without context parallel attention; rank 0 writes the largest differences to the JSON file argv[1]."""

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).parent))
from animate.backbone import PackedInput  # noqa: E402
from animate.parallel import enable_context_parallel  # noqa: E402

import tiny_systems  # noqa: E402

dist.init_process_group("gloo")
torch.manual_seed(0)
system = tiny_systems.unianimate().eval()  # seeded: the same weights on both ranks
backbone = system.backbone
g = torch.Generator().manual_seed(1)
latents = torch.randn(2, 16, 4, 8, 8, generator=g)  # 4 latent frames of 4 x 4 tokens
packed = PackedInput(latents=latents, t=torch.rand(2, 4, generator=g), channel_cond=torch.randn(2, 20, 4, 8, 8, generator=g),
                     injections={-1: torch.randn(2, 64, 24, generator=g), 1: torch.randn(2, 64, 24, generator=g)})
batch = tiny_systems.fake_batch()  # 5 frames: 2 latent frames, one per rank
with torch.no_grad():
    single = backbone(packed)
    single_clip = system.sample_latents(batch, steps=2, guidance=[1.5])
    enable_context_parallel(backbone, ulysses_degree=2)
    seen = []
    hook = backbone.transformer.blocks[0].attn1.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[1]))
    split = backbone(packed)
    hook.remove()
    split_clip = system.sample_latents(batch, steps=2, guidance=[1.5])
if dist.get_rank() == 0:
    Path(sys.argv[1]).write_text(json.dumps({"forward": (split - single).abs().max().item(), "clip": (split_clip - single_clip).abs().max().item(),
                                             "scale": single.abs().max().item(),
                                             "tokens_per_rank": seen[0]}))
dist.barrier()
os._exit(0)  # past the barrier both ranks are done: skip the interpreter's teardown, where gloo's threads can abort the process
