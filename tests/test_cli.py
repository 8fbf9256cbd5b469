"""The shared command line (common.cli): a mistake ends in one ``error:`` line and exit status 2, for every tool."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from common.cli import compose_config, run
from experiments.cli import NOT_EXPERIMENTS, experiment_names

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "OMP_NUM_THREADS": "1"}


def error_lines(stderr: str) -> list[str]:
    """The ``error:`` lines of a command's stderr."""
    return [line for line in stderr.splitlines() if line.startswith("error:")]


@pytest.mark.parametrize("override, message", [
    ("foo=1", "error: foo=1: no key 'foo' in conf/unianimate.yaml (valid keys: backbone, "),
    ("data.batch_size=0", "error: data.batch_size=0: must be an integer >= 1"),
    ("data.batch_size=abc", "error: data.batch_size=abc: must be an integer >= 1"),
])
def test_fit_reports_a_bad_override_in_one_line(override, message, tmp_path):
    command = [sys.executable, "-m", "experiments.fit", "conf=unianimate", override, f"hydra.run.dir={tmp_path}", "logger=none"]
    result = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert len(error_lines(result.stderr)) == 1 and error_lines(result.stderr)[0].startswith(message), result.stderr
    assert override != "foo=1" or error_lines(result.stderr)[0].endswith("to add a new key use +foo=1")


def reported_error(capsys, conf: str, overrides: list[str]) -> str:
    """The one-line error of running a do-nothing task on ``conf`` with ``overrides`` (asserting exit status 2)."""
    with pytest.raises(SystemExit) as exit_info:
        run(lambda cfg: None, conf, overrides)
    error = capsys.readouterr().err
    assert exit_info.value.code == 2 and error.count("\n") == 1, error
    return error.strip()


def test_composition_errors_are_one_line(capsys):
    assert reported_error(capsys, "unianimate", ["data.batch_sise=2"]) == (
        "error: data.batch_sise=2: no key 'data.batch_sise' in conf/unianimate.yaml (did you mean data.batch_size?); "
        "to add a new key use +data.batch_sise=2")
    assert reported_error(capsys, "unianimate", ["data=nope"]) == "error: data=nope: no conf/data/nope.yaml; valid: prepared, synthetic"
    assert reported_error(capsys, "unianimate", ["seed"]).startswith("error: seed: cannot parse it (missing EQUAL")


def test_a_missing_mandatory_value_names_the_key(capsys):
    with pytest.raises(SystemExit) as exit_info:
        run(lambda cfg: cfg.out, "synthetic", [])
    assert exit_info.value.code == 2 and capsys.readouterr().err == "error: Missing mandatory value: out (add out=VALUE)\n"


def test_a_task_result_comes_back_and_hydra_leaves_no_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run(lambda cfg: cfg.out, "synthetic", ["out=somewhere"]) == "somewhere"
    assert list(tmp_path.iterdir()) == []


def test_tool_configs_are_not_experiments():
    assert {"synthetic", "prepare", "train_vae"} <= NOT_EXPERIMENTS and not NOT_EXPERIMENTS & set(experiment_names())
    for tool in ("synthetic", "prepare", "train_vae"):
        assert compose_config(tool, ["out=unused"]).out == "unused"
