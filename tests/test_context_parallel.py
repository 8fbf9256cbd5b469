"""Context parallel generation (diffusers' Ulysses attention inside this framework's block loop) on 2 CPU processes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import tiny_systems

ROOT = Path(__file__).resolve().parent.parent


def test_context_parallel_attention_equals_one_process(tmp_path):
    out = tmp_path / "differences.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", "--master-port=29541",
                             str(ROOT / "tests" / "context_parallel_worker.py"), str(out)], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    differences = json.loads(out.read_text())
    assert differences["scale"] > 0.1 and differences["tokens_per_rank"] == 32  # a forward that does something, each rank on half of the 64 tokens
    assert differences["forward"] < 1e-5 and differences["clip"] < 1e-5  # the same velocity and the same sampled clip, split over 2 processes


def test_context_parallel_needs_a_process_group():
    from animate.parallel import enable_context_parallel

    with pytest.raises(RuntimeError, match="initialised process group"):
        enable_context_parallel(tiny_systems.unianimate().backbone, ulysses_degree=2)


def test_a_share_of_frames_per_rank():
    from animate.parallel import ContextParallel

    assert ContextParallel(None, 1, 2, None).frames(6) == slice(3, 6)
    with pytest.raises(ValueError, match="multiple of 2"):
        ContextParallel(None, 0, 2, None).frames(5)
