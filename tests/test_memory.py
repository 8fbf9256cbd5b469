"""benchmarks.memory: live-byte tracking, the static accounting per strategy, and the meta-device estimate against real tensors."""

import torch

from benchmarks.memory import PeakLiveBytes, estimate, fused_attention, static_bytes, training_activations

import tiny_systems


def test_live_bytes_follow_creation_views_and_release():
    x = torch.randn(1000, 1000, requires_grad=True)  # made outside: not counted
    with PeakLiveBytes() as live:
        y = (x @ x).relu()  # the product (4 MB) dies once relu (which saves its output) has run
        view = y.t()  # a view adds nothing
        assert live.live == 4_000_000 and live.peak == 8_000_000
        z = y.sum()
        del y, view
        z.backward()  # x.grad is made; relu's saved output is freed with the graph
    assert live.live == 4_000_004 and live.peak == 16_000_008  # x.grad + z; peak: saved output, incoming and outgoing gradients, x.grad


def test_static_bytes_follow_zero_and_fsdp_accounting():
    assert static_bytes("ddp", 10, 2) == {"weights": 40, "gradients": 8, "optimizer": 16}
    assert static_bytes("zero1", 10, 2, gpus=2) == {"weights": 20, "gradients": 4, "optimizer": 12}
    assert static_bytes("zero2", 10, 2, gpus=2) == {"weights": 20, "gradients": 2, "optimizer": 12}
    assert static_bytes("zero3", 10, 2, gpus=2) == {"weights": 10, "gradients": 2, "optimizer": 12}
    assert static_bytes("fsdp", 10, 2, gpus=2, largest_block=3) == {"weights": 20 + 12, "gradients": 4, "optimizer": 8}


def test_the_ddp_accounting_is_what_an_adamw_step_leaves_in_memory():
    system = tiny_systems.frameprompt()
    optimizer = torch.optim.AdamW([p for p in system.parameters() if p.requires_grad])
    system.loss(tiny_systems.fake_batch()).backward()
    optimizer.step()
    params = list(system.parameters())
    measured = {
        "weights": sum(p.nbytes for p in params),
        "gradients": sum(p.grad.nbytes for p in params if p.grad is not None),
        "optimizer": sum(v.nbytes for state in optimizer.state.values() for k, v in state.items() if k != "step"),
    }
    trainable = sum(p.numel() for p in params if p.requires_grad)
    assert measured == static_bytes("ddp", sum(p.numel() for p in params), trainable)


def test_activations_on_the_meta_device_are_those_of_real_tensors_and_checkpointing_lowers_them():
    batch = tiny_systems.fake_batch(b=1, t=9, h=64, w=64)
    measured = {}
    for device in ("cpu", "meta"):
        for checkpointing in (False, True):
            with torch.device(device):  # meta: the same weights' shapes, no storage
                system = tiny_systems.frameprompt().eval()
            system.backbone.gradient_checkpointing = checkpointing
            with fused_attention():
                measured[device, checkpointing] = training_activations(system, {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()})
    assert measured["meta", False] == measured["cpu", False] and measured["meta", True] == measured["cpu", True]
    assert measured["cpu", True]["step"] < measured["cpu", False]["step"] and measured["cpu", True]["encode"] == measured["cpu", False]["encode"]


def test_estimate_of_a_composed_config():
    report = estimate(["conf=frameprompt", "data.batch_size=1"], frames=9, size=(64, 64), gpus=2)
    training, generation = report["training_gb_per_gpu"], report["generation_gb"]
    assert report["parameters"]["total"] > report["parameters"]["trainable"] > 0  # the VAE is frozen
    assert training["zero3"] < training["zero2"] <= training["zero1"] < training["ddp"]
    assert generation["peak"] >= generation["weights"] > 0 and generation["denoise_activations"] > 0
    assert generation["peak_block_offload"] < generation["peak"]  # the tiny base's 6 blocks, one at a time
