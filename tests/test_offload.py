"""Sequential CPU offload for generation: blocks stay in host memory and visit the compute device one at a time."""

import torch

from animate.parallel import BlockOffloadStrategy

import tiny_systems


def test_each_block_visits_the_compute_device_for_its_turn_only():
    system = tiny_systems.frameprompt().eval()
    backbone = system.backbone
    events = []
    for index, block in enumerate(backbone.transformer.blocks):
        move = block.to
        block.to = lambda device, *args, index=index, move=move, **kwargs: (events.append((index, str(device))), move(device, *args, **kwargs))[1]
        block.attn1.register_forward_pre_hook(lambda module, args, index=index: events.append((index, "runs")))
    batch = tiny_systems.fake_batch()
    with torch.no_grad():
        plain = system.sample_latents(batch, steps=2)
        assert all(event == "runs" for _, event in events)  # off by default: no block moves
        events.clear()
        backbone.offload_blocks = True
        offloaded = system.sample_latents(batch, steps=2)
    per_forward = [(i, e) for i in range(len(backbone.transformer.blocks)) for e in ("cpu", "runs", "cpu")]  # in, run, back out
    assert events == per_forward * 2 and torch.equal(plain, offloaded)


def test_the_strategy_moves_everything_but_the_blocks_and_turns_offload_on():
    system = tiny_systems.frameprompt()
    strategy = BlockOffloadStrategy(device=torch.device("meta"))  # the meta device stands in for a GPU: moved tensors keep their shapes only
    strategy.connect(system)
    strategy.model_to_device()
    backbone = system.backbone
    assert backbone.offload_blocks and all(p.device.type == "cpu" for p in backbone.transformer.blocks.parameters())
    assert backbone.transformer.patch_embedding.weight.is_meta and backbone.text_embedding.is_meta
    assert len(backbone.transformer.blocks) == 2
