"""Training under DDP and FSDP on two CPU processes (gloo): LoRA runs checkpoint only what they train, and resume from it."""

import json
from pathlib import Path

import pytest
import torch
from test_experiments import fit

from experiments.prediction import load_run, read_checkpoint


def write_checkpoint(path: Path, checkpoint: dict) -> None:
    """Write back what :func:`read_checkpoint` read: a Lightning file, or a DeepSpeed directory's model states, where
    ZeRO's float32 master weights (which a resume continues from) get the same mark, every trainable weight set to 5."""
    if path.is_file():
        torch.save(checkpoint, path)
        return
    checkpoint = dict(checkpoint)
    torch.save(checkpoint | {"module": checkpoint.pop("state_dict")}, path / "checkpoint" / "mp_rank_00_model_states.pt")
    for shard in (path / "checkpoint").glob("zero_pp_rank_*_optim_states.pt"):
        states = torch.load(shard, map_location="cpu", weights_only=False)
        states["optimizer_state_dict"]["single_partition_of_fp32_groups"] = [
            torch.full_like(group, 5.0) for group in states["optimizer_state_dict"]["single_partition_of_fp32_groups"]]
        torch.save(states, shard)


@pytest.mark.parametrize("trainer", ["ddp_cpu", "fsdp_cpu", "deepspeed_cpu"])
def test_a_lora_run_checkpoints_its_adapter_alone_and_resumes_with_it(trainer, workdir, smoke_overrides):
    cpu = {"DS_ACCELERATOR": "cpu"}  # DeepSpeed picks its accelerator at import
    run = workdir / f"run_lora_{trainer}"
    result = fit(["conf=frameprompt", *smoke_overrides(workdir), f"trainer={trainer}", "method.lora.rank=4", f"hydra.run.dir={run}"],
                 env=cpu)
    assert result.returncode == 0, result.stderr[-3000:]
    saved = read_checkpoint(run / "last.ckpt")  # DeepSpeed: a directory
    keys = set(saved["state_dict"])
    assert keys and all(".lora_A." in key or ".lora_B." in key for key in keys)  # no frozen Wan weight in the file
    assert len(keys) == 6 * (4 + 4 + 2) * 2  # the tiny base's 6 blocks x (q, k, v, o of both attentions, 2 FFN layers) x (A, B): all shards gathered
    assert any(saved["state_dict"][key].abs().sum() > 0 for key in keys if ".lora_B." in key)  # trained: not lora_B's zero start
    # mark the saved adapter (every lora_B set to 5; under DeepSpeed every trainable weight) and resume for one step:
    # the run must continue from the marked weights
    for key in keys:
        if ".lora_B." in key or trainer == "deepspeed_cpu":
            saved["state_dict"][key] = torch.full_like(saved["state_dict"][key], 5.0)
    write_checkpoint(run / "last.ckpt", saved)
    result = fit([f"resume={run}", "trainer.max_steps=3"], env=cpu)
    assert result.returncode == 0, result.stderr[-3000:]
    resumed = read_checkpoint(run / "last.ckpt")
    assert resumed["global_step"] == 3 and json.loads((run / "summary.json").read_text())["steps_this_session"] == 1
    assert set(resumed["state_dict"]) == keys
    assert all((resumed["state_dict"][key] - 5.0).abs().max() < 0.1 for key in keys if ".lora_B." in key)  # one step away from 5, not from 0
    system, _, _ = load_run(str(run / "last.ckpt"))  # what experiments.generate reads, from a file or DeepSpeed's directory
    lora_b = {name: p for name, p in system.named_parameters() if ".lora_B." in name}
    assert lora_b and all((p - 5.0).abs().max() < 0.1 for p in lora_b.values())
