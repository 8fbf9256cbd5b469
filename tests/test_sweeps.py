"""Sweep files and the offline sweep runner: W&B's schema, real config keys, fit + evaluation, skip and resume."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from common.cli import compose_config
from experiments.sweep import PLAN, RESULT, fit_command, load_sweep, long_drift, main, plan

ROOT = Path(__file__).resolve().parent.parent
SWEEP_FILES = sorted((ROOT / "sweeps").rglob("*.yaml"))


def conf_of(sweep, parameters: dict) -> str:
    """The experiment a planned run composes: its ``conf`` parameter, else the command's ``conf=``."""
    fixed = [part.split("=", 1)[1] for part in map(str, sweep.config["command"]) if part.startswith("conf=")]
    return str(parameters.get("conf", fixed[0] if fixed else "fit"))


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: str(p.relative_to(ROOT / "sweeps")))
def test_every_sweep_is_a_valid_wandb_sweep_whose_runs_compose(path, tmp_path):
    sweep = load_sweep(path)  # W&B's schema and our command
    runs, finished = plan(sweep, tmp_path, count=None if sweep.config["method"] == "grid" else 3)
    assert finished == 0 and len(runs) >= 2
    assert len({run.run_dir for run in runs}) == len(runs)  # every parameter set has its own folder
    for run in runs:
        overrides = [o for o in run.overrides if not o.startswith("conf=")]
        cfg = compose_config(conf_of(sweep, run.parameters), overrides)  # an unknown key or group option raises
        for key, value in run.parameters.items():
            if key not in ("conf", "variant", "backbone", "data", "trainer") and "${" not in str(value):
                assert cfg[key.split(".")[0]] is not None and str(_select(cfg, key)).lower() == str(value).lower(), key


def _select(cfg, key: str):
    """The composed value at a dotted key."""
    from omegaconf import OmegaConf

    return OmegaConf.select(cfg, key, throw_on_missing=False)


def test_variants_change_what_their_paper_row_says():
    rows = {name: compose_config("onetoall", [f"variant={name}"]) for name in ("none", "onetoall_base_extractor", "onetoall_face_enhancement")}
    said = {name: (cfg.data.face_enhancement, cfg.method.pose_control.enabled, cfg.method.pose_control.style) for name, cfg in rows.items()}
    assert said == {"none": (0.7, True, "paper"), "onetoall_base_extractor": (0.0, True, "driving"),  # Table 3: every row is driven by
                    "onetoall_face_enhancement": (0.7, True, "driving")}                                # the poses, the base rows without the reference
    k1 = compose_config("everanimate", ["variant=everanimate_identity_views_1"])
    assert (k1.method.identity_views, k1.data.reference_views) == (1, 0)


def _write(tmp_path: Path, config: dict) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


GRID = {"name": "tiny", "method": "grid", "parameters": {"seed": {"values": [0, 1]}},
        "command": ["${env}", "python", "-m", "experiments.fit", "conf=unianimate", "${args_no_hyphens}"]}


def test_bad_sweep_files_are_refused_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit):
        load_sweep(_write(tmp_path, GRID | {"budget": 3}))
    assert "sweep.yaml: not a valid W&B sweep" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        load_sweep(_write(tmp_path, GRID | {"command": ["python", "-m", "experiments.fit", "${args}"]}))
    assert "${args_no_hyphens}" in capsys.readouterr().err
    random = _write(tmp_path, GRID | {"method": "random", "parameters": {"method.optimizer.lr": {"min": 1e-4, "max": 1e-3}}})
    with pytest.raises(SystemExit):
        plan(load_sweep(random), tmp_path)
    assert "--count" in capsys.readouterr().err


def test_random_sweeps_plan_the_same_runs_on_every_machine(tmp_path):
    sweep = load_sweep(_write(tmp_path, GRID | {"method": "random", "parameters": {"method.optimizer.lr": {"min": 1e-4, "max": 1e-3}}}))
    first, _ = plan(sweep, tmp_path, count=3)
    again, _ = plan(sweep, tmp_path, count=3)
    assert [r.parameters for r in first] == [r.parameters for r in again]
    assert len({r.parameters["method.optimizer.lr"] for r in first}) == 3 and all(isinstance(r.parameters["method.optimizer.lr"], float) for r in first)


def test_only_slices_a_grid_into_the_same_run_folders(tmp_path, capsys):
    path = _write(tmp_path, GRID | {"parameters": {"seed": {"values": [0, 1, 2]}, "variant": {"values": ["none", "a", "b"]}}})
    whole, _ = plan(load_sweep(path), tmp_path)
    main([str(path), "--root", str(tmp_path), "--only", "variant=none,b", "--dry-run"])
    printed = capsys.readouterr().out
    kept = [run for run in whole if run.parameters["variant"] in ("none", "b")]
    assert "6 to run (only variant=none,b)" in printed
    assert all(run.run_dir.name in printed for run in kept) and not any(run.run_dir.name in printed for run in whole if run not in kept)
    main([str(path), "--root", str(tmp_path), "--only", "seed=2", "variant=a", "--dry-run"])
    assert "1 to run" in capsys.readouterr().out
    for bad, message in ((["--only", "sed=1"], "sed is not a parameter"), (["--only", "seed"], "write KEY=VALUE")):
        with pytest.raises(SystemExit):
            main([str(path), "--root", str(tmp_path), *bad, "--dry-run"])
        assert message in capsys.readouterr().err
    random = _write(tmp_path, GRID | {"method": "random", "parameters": {"method.optimizer.lr": {"min": 1e-4, "max": 1e-3}}})
    with pytest.raises(SystemExit):
        main([str(random), "--root", str(tmp_path), "--count", "2", "--only", "method.optimizer.lr=0.001", "--dry-run"])
    assert "--only slices a grid" in capsys.readouterr().err


def test_the_long_clips_drift_is_read_from_its_drift_curve(tmp_path):
    lines = ["window,start_frame,stop_frame,start_s,clips,psnr,ssim"] + [f"{i},{8 * i},{8 * i + 8},{i},1,{20 - i},0.5" for i in range(4)]
    (tmp_path / "drift.csv").write_text("\n".join(lines) + "\n")
    assert long_drift(tmp_path / "drift.csv") == {"psnr": -3.0, "ssim": 0.0}  # windows 3 minus 0; the columns that are not metrics ignored
    assert long_drift(tmp_path / "missing.csv") == {}


def test_offline_sweep_fits_evaluates_skips_and_resumes(tmp_path, workdir, smoke_overrides, monkeypatch, capsys):
    for key, value in {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "OMP_NUM_THREADS": "1"}.items():
        monkeypatch.setenv(key, value)
    smoke = dict(o.split("=", 1) for o in smoke_overrides(workdir) if not o.startswith("logger="))
    fixed = {key: {"value": yaml.safe_load(value)} for key, value in smoke.items()} | {"heldout.num_clips": {"value": 1}, "heldout.kinds": {"value": ["video", "long"]}}
    path = _write(tmp_path, GRID | {"parameters": GRID["parameters"] | fixed})
    root = tmp_path / "runs"

    main([str(path), "--root", str(root), "--dry-run"])
    assert "0 finished, 2 to run" in capsys.readouterr().out and not root.exists()

    results = main([str(path), "--root", str(root)])
    assert all(results) and len(results) == 2
    for result in results:
        run_dir = root / "tiny" / result["run_id"]
        assert result["parameters"]["seed"] in (0, 1) and (run_dir / RESULT).is_file()
        assert {"test/trained/psnr", "test/repeat_reference/psnr_mask", "test/untrained/silhouette_iou", "test_long/trained/psnr", "val/psnr_mask"} <= set(result["metrics"])
        windows = len((run_dir / "heldout_long" / "drift.csv").read_text().splitlines()) - 1
        assert windows >= 1 and ("test_long/trained/psnr_drift" in result["metrics"]) == (windows >= 2)  # a drift needs two chunks
        offline = list((run_dir / "wandb").glob(f"offline-run-*-{result['wandb_id']}"))
        assert len(offline) == 2  # the fit's W&B run and the held-out scores added to it (offline, synced as one run)

    from experiments.leaderboard import leaderboard, load_runs

    board = leaderboard(load_runs(root / "tiny"), by=["method"])  # the runs the runner wrote feed the notebooks' tables
    assert set(board["model"]) == {"trained", "untrained", "base", "repeat_reference"} and set(board["seeds"]) == {2}
    assert set(board["protocol"]) == {"synthetic v1"} and results[0]["protocols"] == {"video": "synthetic v1", "long": "framework v1"}

    main([str(path), "--root", str(root), "--archive", str(tmp_path / "kept")])  # what the notebooks read, small enough to commit
    kept = load_runs(tmp_path / "kept" / "tiny")
    assert len(kept) == 2 and set(kept["test/trained/psnr"]) == {r["metrics"]["test/trained/psnr"] for r in results}
    archived = tmp_path / "kept" / "tiny" / results[0]["run_id"] / RESULT
    stale = json.loads(archived.read_text())
    archived.write_text(json.dumps(stale | {"metrics": {"test/trained/psnr": 0.0}}))  # scores written by an older reader
    main([str(path), "--root", str(tmp_path / "kept"), "--rescore"])  # recomputed from the archived evaluation files
    assert json.loads(archived.read_text())["metrics"] == results[0]["metrics"]
    assert not list((tmp_path / "kept").rglob("*.ckpt")) and len(list((tmp_path / "kept").rglob("*.png"))) == 2

    stamp = {r["run_id"]: (root / "tiny" / r["run_id"] / RESULT).stat().st_mtime_ns for r in results}
    capsys.readouterr()
    main([str(path), "--root", str(root)])
    assert "2 finished, 0 to run" in capsys.readouterr().out
    assert all((root / "tiny" / k / RESULT).stat().st_mtime_ns == v for k, v in stamp.items())  # skipped, not redone

    # an interrupted run (a checkpoint, no summary, no result) resumes from its checkpoint
    interrupted = root / "tiny" / results[0]["run_id"]
    (interrupted / RESULT).unlink()
    (interrupted / "summary.json").unlink()
    runs, finished = plan(load_sweep(path), root)
    assert finished == 1 and [r.run_dir for r in runs] == [interrupted]
    assert fit_command(load_sweep(path), runs[0])[-1] == f"resume={interrupted}"
    main([str(path), "--root", str(root)])
    assert (interrupted / RESULT).is_file() and json.loads((interrupted / "summary.json").read_text())["status"] == "finished"

    # the launcher path: Hydra's submitit launcher runs each planned run as a job (here local processes; all finished)
    plan_file = root / "tiny" / PLAN
    plan_file.write_text(json.dumps({"sweep": str(path), "runs": [{"parameters": r["parameters"], "run_dir": str(root / "tiny" / r["run_id"])} for r in results]}))
    launched = subprocess.run([sys.executable, "-m", "experiments.sweep_run", "-m", f"plan={plan_file}", "index=0,1", "hydra/launcher=submitit_local",
                               f"hydra.sweep.dir={tmp_path / 'launcher'}"], cwd=ROOT, env=os.environ, capture_output=True, text=True, timeout=600)
    assert launched.returncode == 0, launched.stderr[-2000:]
    assert len(list((tmp_path / "launcher").rglob("*_result.pkl"))) == 2  # one submitit job per planned run
