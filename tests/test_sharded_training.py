"""Training under DDP and FSDP on two CPU processes (gloo): LoRA runs checkpoint only what they train, and resume from it."""

import json

import pytest
import torch
from test_experiments import fit


@pytest.mark.parametrize("trainer", ["ddp_cpu", "fsdp_cpu"])
def test_a_lora_run_checkpoints_its_adapter_alone_and_resumes_with_it(trainer, workdir, smoke_overrides):
    run = workdir / f"run_lora_{trainer}"
    result = fit(["conf=frameprompt", *smoke_overrides(workdir), f"trainer={trainer}", "method.lora.rank=4", f"hydra.run.dir={run}"])
    assert result.returncode == 0, result.stderr[-3000:]
    saved = torch.load(run / "last.ckpt", map_location="cpu", weights_only=False)
    keys = set(saved["state_dict"])
    assert keys and all(".lora_A." in key or ".lora_B." in key for key in keys)  # no frozen Wan weight in the file
    assert len(keys) == 6 * (4 + 4 + 2) * 2  # the tiny base's 6 blocks x (q, k, v, o of both attentions, 2 FFN layers) x (A, B): all shards gathered
    # mark the saved adapter (every lora_B set to 5) and resume for one step: the run must continue from the marked weights
    for key in keys:
        if ".lora_B." in key:
            saved["state_dict"][key] = torch.full_like(saved["state_dict"][key], 5.0)
    torch.save(saved, run / "last.ckpt")
    result = fit([f"resume={run}", "trainer.max_steps=3"])
    assert result.returncode == 0, result.stderr[-3000:]
    resumed = torch.load(run / "last.ckpt", map_location="cpu", weights_only=False)
    assert resumed["global_step"] == 3 and json.loads((run / "summary.json").read_text())["steps_this_session"] == 1
    assert set(resumed["state_dict"]) == keys
    assert all((resumed["state_dict"][key] - 5.0).abs().max() < 0.1 for key in keys if ".lora_B." in key)  # one step away from 5, not from 0
