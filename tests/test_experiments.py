"""The entry points as a user runs them: every conf, DDP, kill and resume, generate, bad input."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from experiments.cli import experiment_names

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def fit(args: list[str], timeout: int = 600, env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    """Run ``python -m experiments.fit`` from the repository root (``env``: variables added to the test environment)."""
    return subprocess.run([sys.executable, "-m", "experiments.fit", *args], cwd=ROOT, env=ENV | (env or {}), capture_output=True, text=True,
                          timeout=timeout, **kwargs)


def ckpt_step(path: Path) -> int:
    """The global step stored in a Lightning checkpoint."""
    return torch.load(path, map_location="cpu", weights_only=False)["global_step"]


@pytest.mark.parametrize("conf", experiment_names(real_scale=False))  # conf/real/ needs Wan weights: tests/test_real_scale.py builds them on the meta device
def test_every_conf_trains_checkpoints_and_writes_samples(conf, workdir, smoke_overrides):
    run = workdir / f"run_{conf}"
    result = fit([f"conf={conf}", *smoke_overrides(workdir), f"hydra.run.dir={run}"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert (run / "last.ckpt").exists() and (run / "checkpoints" / "step_000002.ckpt").exists()
    assert list((run / "samples").glob("step_*.mp4")) and list((run / "samples").glob("step_*.gif"))
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["global_step"] == 2
    assert "val/psnr_mask" in summary["metrics"] and (run / ".hydra" / "config.yaml").exists()


def test_generate_renders_heldout_clips_and_scores_baselines(workdir):
    run = workdir / "run_frameprompt"
    if not (run / "last.ckpt").exists():
        pytest.skip("needs the frameprompt smoke run")
    out = workdir / "generated"
    result = subprocess.run(
        [sys.executable, "-m", "experiments.generate", f"ckpt={run / 'last.ckpt'}", "num_clips=1", "sampler.steps=2", f"out={out}", f"figure={workdir / 'figure.png'}"],
        cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "heldout.json").read_text())
    assert set(report["overall"]) == {"trained", "untrained", "base", "repeat_reference"} and report["clips"] == 1
    assert all(set(values) == {"psnr", "psnr_mask", "ssim_mask", "silhouette_iou", "fpsnr"} for values in report["overall"].values())
    assert report["overall"]["repeat_reference"]["silhouette_iou"] < 1 and all(0 <= v["silhouette_iou"] <= 1 for v in report["overall"].values())
    for model in report["overall"]:  # every model went through trainer.predict and the clip writer
        assert len(list((out / model).glob("*/frame_*.png"))) == 5
        assert len(list((out / "grids" / model).glob("*.mp4"))) == 1
        still = np.asarray(Image.open(next((out / "grids" / model).glob("*.png"))))
        height, width = np.asarray(Image.open(next((out / model).glob("*/frame_*.png")))).shape[:2]  # the puppets come in several aspect ratios
        assert still.shape == (4 * height, 4 * width, 3)  # 4 frames down; reference | pose | generated | truth across
    assert np.array_equal(np.asarray(Image.open(workdir / "figure.png")), np.asarray(Image.open(next((out / "grids" / "trained").glob("*.png")))))
    assert len(list((out / "target").glob("*.pose.npy"))) == 1 and len(list((out / "target").glob("*.mask.npy"))) == 1
    assert len(list((out / "target").glob("*.plate.npy"))) == 1
    # repeating the reference is the reference frame, exactly
    clip = next((out / "repeat_reference").iterdir())
    frames = [np.asarray(Image.open(f)) for f in sorted(clip.glob("*.png"))]
    assert all((frame == frames[0]).all() for frame in frames)


def test_generate_reads_the_dataset_given_on_the_command_line(workdir):
    run = workdir / "run_frameprompt"
    if not (run / "last.ckpt").exists():
        pytest.skip("needs the frameprompt smoke run")
    other, out = workdir / "other_data", workdir / "generated_other"
    result = subprocess.run(
        [sys.executable, "-m", "experiments.generate", f"ckpt={run / 'last.ckpt'}", "num_clips=2", "models=[repeat_reference]", "grids=false",
         f"out={out}", f"+data.root={other}", "+data.synthetic.test_clips=1"],
        cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((other / "manifest.json").read_text())["config"]["test_clips"] == 1  # made where asked, as asked
    assert json.loads((out / "heldout.json").read_text())["clips"] == 1  # the run's own data has 2 test clips


def test_generation_splits_clips_over_two_processes_with_the_same_result(workdir):
    run = workdir / "run_frameprompt"
    if not (run / "last.ckpt").exists():
        pytest.skip("needs the frameprompt smoke run")
    outs = {}
    for trainer in ("cpu", "ddp_cpu"):
        outs[trainer] = workdir / f"generated_{trainer}"
        command = [sys.executable, "-m", "experiments.generate", f"ckpt={run / 'last.ckpt'}", "num_clips=2", "batch_size=1",
                   "sampler.steps=2", "models=[trained]", "grids=false", f"trainer={trainer}", f"out={outs[trainer]}"]
        result = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
    single, split = (sorted((outs[t] / "trained").rglob("*.png")) for t in ("cpu", "ddp_cpu"))
    assert len(single) == 10 and [p.relative_to(outs["cpu"]) for p in single] == [p.relative_to(outs["ddp_cpu"]) for p in split]
    for a, b in zip(single, split):
        assert np.abs(np.asarray(Image.open(a), np.int16) - np.asarray(Image.open(b), np.int16)).max() <= 1
    assert json.loads((outs["ddp_cpu"] / "heldout.json").read_text())["clips"] == 2


def test_generate_skips_the_base_model_for_a_run_from_random_init(workdir):
    run = workdir / "run_base"  # conf=base trains from the seeded random init: there is no base to compare
    if not (run / "last.ckpt").exists():
        pytest.skip("needs the base smoke run")
    out = workdir / "generated_base_run"
    command = [sys.executable, "-m", "experiments.generate", f"ckpt={run / 'last.ckpt'}", "num_clips=1", "sampler.steps=1",
               "models=[trained,base]", "grids=false", f"out={out}"]
    result = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert set(json.loads((out / "heldout.json").read_text())["overall"]) == {"trained"}


def test_heldout_curve_scores_checkpoints_beside_the_baselines_and_skips_scored_steps(workdir):
    run = workdir / "run_unianimate"
    if not (run / "checkpoints" / "step_000002.ckpt").exists():
        pytest.skip("needs the unianimate smoke run")
    command = [sys.executable, "-m", "benchmarks.heldout_curve", str(run), "--steps", "2", "--num-clips", "1",
               "--baselines", "untrained", "repeat_reference", "sampler.steps=1", "grids=false"]  # overrides after a list option
    result = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads((run / "heldout_curve" / "curve.json").read_text())["rows"]
    assert [(row["model"], row["step"]) for row in rows] == [("untrained", 0), ("repeat_reference", None), ("trained", 2)]
    assert all(0 <= row["silhouette_iou"] <= 1 and row["clips"] == 1 for row in rows)
    table = (run / "heldout_curve" / "curve.md").read_text().splitlines()
    assert table[0].startswith("| model | step | psnr | psnr_mask | silhouette_iou") and table[4].startswith("| trained | 2 | ")
    report = run / "heldout_curve" / "step_2" / "heldout.json"
    scored_at = report.stat().st_mtime_ns
    again = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and report.stat().st_mtime_ns == scored_at  # already scored: not generated again
    missing = subprocess.run([*command[:5], "3"], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert missing.returncode != 0 and "no checkpoint of step 3; saved steps: [2]" in missing.stderr


def test_velocity_error_splits_the_error_by_person_and_noise_level(workdir):
    from benchmarks.velocity_error import main

    run = workdir / "run_unianimate"
    if not (run / "last.ckpt").exists():
        pytest.skip("needs the unianimate smoke run")
    result = main([str(run / "last.ckpt"), "--clips", "1", "--times", "0.2", "0.9", "--margin", "1"])
    assert result["clips"] == 1 and result["global_step"] == 2
    for model in ("untrained", "trained"):
        assert set(result[model]) == {"person@0.2", "background@0.2", "person@0.9", "background@0.9"}
        assert all(value > 0 for value in result[model].values())


def test_sampling_trace_follows_the_clean_clip_estimate_to_the_sample(workdir, tmp_path):
    from benchmarks.sampling_trace import main

    run = workdir / "run_unianimate"
    if not (run / "last.ckpt").exists():
        pytest.skip("needs the unianimate smoke run")
    figure = tmp_path / "trace.png"
    result = main([str(run / "last.ckpt"), "--split", "train", "--clips", "1", "--figure", str(figure)])
    steps = result["steps"]
    assert result["clips"] == 1 and result["global_step"] == 2 and [row["step"] for row in steps] == list(range(len(steps)))
    assert steps[0]["t"] == 1.0 and all(a["t"] > b["t"] > 0 for a, b in zip(steps, steps[1:]))
    assert all(row[k] > 0 for row in [*steps, result["sample"]] for k in ("all", "person", "background"))
    # the last step lands on x0 = x_t - t v, so the sample is the last step's estimate
    assert result["sample"]["all"] == pytest.approx(steps[-1]["all"], rel=1e-3)
    tiles = np.split(np.asarray(Image.open(figure)), len(result["strip_steps"]) + 2, axis=1)  # estimates, sample, truth
    assert tiles[0].shape[0] == 64 and not np.array_equal(tiles[-2], tiles[-1])


def test_export_writes_the_trained_transformer_for_both_weight_layouts(workdir):
    from safetensors import safe_open

    from animate.backbone import load_backbone
    from animate.weights import load_transformer
    from experiments.prediction import load_run

    run = workdir / "run_base"
    if not (run / "last.ckpt").exists():
        pytest.skip("needs the base smoke run")
    outs = {"diffusers": workdir / "exported", "original": workdir / "exported_original.safetensors"}
    for layout, out in outs.items():
        result = subprocess.run(
            [sys.executable, "-m", "experiments.export", f"ckpt={run / 'last.ckpt'}", f"out={out}", f"layout={layout}"],
            cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300,
        )
        assert result.returncode == 0, result.stderr[-3000:]
    with safe_open(str(outs["diffusers"] / "diffusion_pytorch_model.safetensors"), "pt") as stored:
        dtypes = {key: stored.get_tensor(key).dtype for key in stored.keys()}
    assert dtypes["blocks.0.attn1.to_q.weight"] == torch.float16 and dtypes["scale_shift_table"] == torch.float32  # diffusers' fp32 modules stay
    assert sum(d == torch.float16 for d in dtypes.values()) > 0.8 * len(dtypes)
    system = load_run(str(run / "last.ckpt"))[0]
    trained = system.backbone.transformer.state_dict()
    predicted = {"prediction": system.backbone.prediction}  # the parametrisation travels with the weights
    assert json.loads((outs["diffusers"] / "transformer.prediction.json").read_text()) == predicted
    assert json.loads(Path(f"{outs['original']}.prediction.json").read_text()) == predicted
    other = "sample" if system.backbone.prediction == "velocity" else "velocity"
    with pytest.raises(ValueError, match=f"these weights predict the {system.backbone.prediction} .* set backbone.prediction={system.backbone.prediction}"):
        load_backbone(dict(path=str(outs["diffusers"])), prediction=other)
    for loaded in (load_transformer(outs["diffusers"]), load_transformer(outs["original"], config=outs["diffusers"])):
        state = loaded.state_dict()
        assert state.keys() == trained.keys()
        assert all(torch.equal(state[key], trained[key].to(dtypes.get(key, torch.float32)).float()) for key in trained)
    bad = subprocess.run([sys.executable, "-m", "experiments.export", f"ckpt={run / 'last.ckpt'}", "out=x", "dtype=int8"], cwd=ROOT, env=ENV, capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1] == "error: dtype=int8: use one of float16, bfloat16, float32"


def test_a_compact_checkpoint_holds_the_trained_weights_and_a_portable_config(workdir):
    from experiments.prediction import load_run, read_checkpoint

    run = workdir / "run_unianimate"
    if not (run / "last.ckpt").exists():
        pytest.skip("needs the unianimate smoke run")
    out = workdir / "compact" / "unianimate.ckpt"
    result = subprocess.run([sys.executable, "-m", "experiments.export", f"ckpt={run / 'last.ckpt'}", "what=checkpoint", f"out={out}"],
                            cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    full, compact = read_checkpoint(run / "last.ckpt"), read_checkpoint(out)
    assert set(compact) == {"state_dict", "run_config", "global_step", "exported_from"} and compact["global_step"] == full["global_step"]
    assert compact["state_dict"].keys() == full["state_dict"].keys()  # what the run trained, nothing of the frozen base
    assert all(v.dtype == torch.float16 for v in compact["state_dict"].values() if v.is_floating_point())
    assert out.stat().st_size < 0.5 * (run / "last.ckpt").stat().st_size  # no optimizer state, half precision
    dumped = json.dumps(compact["run_config"])  # the cache and run directories of this machine are interpolations again
    assert str(workdir / "cache") not in dumped and str(run) not in dumped and "${paths.cache}/latents" in dumped
    trained, _, _ = load_run(str(run / "last.ckpt"))
    restored, cfg, _ = load_run(str(out))
    assert cfg.paths.cache == os.environ.get("ANIMATE_CACHE", ".cache")
    for key, value in full["state_dict"].items():
        assert torch.equal(restored.state_dict()[key], value.to(torch.float16).to(value.dtype)), key
    bad = subprocess.run([sys.executable, "-m", "experiments.export", f"ckpt={run / 'last.ckpt'}", "what=checkpoint", "out=x.pt"],
                         cwd=ROOT, env=ENV, capture_output=True, text=True)
    assert bad.returncode == 2 and "name it FILE.ckpt" in bad.stderr


def test_no_logger_trains(workdir, smoke_overrides):
    run = workdir / "run_no_logger"
    result = fit(["conf=frameprompt", *smoke_overrides(workdir), "logger=none", "callbacks.sample_videos.every_n_steps=0", f"hydra.run.dir={run}"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((run / "summary.json").read_text())["status"] == "finished"


def test_two_process_cpu_ddp(workdir, smoke_overrides):
    run = workdir / "run_ddp"
    result = fit(["conf=frameprompt", *smoke_overrides(workdir), "trainer=ddp_cpu", f"hydra.run.dir={run}"])
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["global_step"] == 2


def test_killed_run_resumes_without_lost_steps(workdir, smoke_overrides):
    run = workdir / "run_resume"
    args = ["conf=frameprompt", *smoke_overrides(workdir, steps=400), "ckpt_every_n_steps=1000",
            "callbacks.sample_videos.every_n_steps=0", f"hydra.run.dir={run}"]
    process = subprocess.Popen([sys.executable, "-m", "experiments.fit", *args], cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = run / "csv" / "metrics.csv"
    deadline = time.time() + 300
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().count("\n") > 3):
        time.sleep(1)  # csv rows appear every 10 steps: the run is well into training
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=300)
    saved = ckpt_step(run / "last.ckpt")
    assert saved >= 10 and "interrupted at step" in output, output[-3000:]
    assert json.loads((run / "summary.json").read_text())["status"].startswith("interrupted")
    # a periodic save after the resume, the first of this run: it must overwrite last.ckpt, not write last-v1.ckpt
    # beside it (a later kill would then resume from the older last.ckpt)
    result = fit([f"resume={run}", "trainer.max_steps=" + str(saved + 3), f"ckpt_every_n_steps={saved + 2}"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert ckpt_step(run / "last.ckpt") == saved + 3  # continued from the saved step, not from 0
    assert (run / "checkpoints" / f"step_{saved + 2:06d}.ckpt").exists() and sorted(p.name for p in run.glob("last*.ckpt")) == ["last.ckpt"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps_this_session"] == 3
    earlier = (run / "csv" / "metrics.0.csv").read_text()  # the first launch's log survives the resume
    assert earlier.count("\n") > 3 and "train/loss" in earlier.splitlines()[0]
    from benchmarks.loss_curve import read_log
    steps = sorted({int(row["step"]) for row in read_log(run) if row.get("train/loss")})
    assert steps[0] < 10 and steps[-1] >= saved - 10  # the curve still starts with the first launch's rows


def test_unknown_conf_is_a_one_line_error_listing_valid_names():
    result = fit(["conf=unianimat"], timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "conf/unianimat.yaml" in result.stderr and "unianimate" in result.stderr


def test_invalid_override_names_the_key():
    result = fit(["conf=frameprompt", "method.loss_frame=all"], timeout=120)
    assert result.returncode != 0 and "loss_frame" in result.stderr and "Traceback" not in result.stderr


def test_invalid_override_value_is_rejected_by_the_method():
    result = fit(["conf=frameprompt", "method.loss_frames=some", "data.root=/nonexistent"], timeout=120)
    assert result.returncode != 0 and "loss_frames" in result.stderr


def test_missing_dataset_names_the_path(tmp_path):
    result = fit(["conf=frameprompt", f"data.root={tmp_path}/absent", "data.synthetic=null", f"hydra.run.dir={tmp_path}/run", "logger=csv"], timeout=300)
    assert result.returncode != 0 and f"{tmp_path}/absent" in result.stderr and "data.synthetic" in result.stderr


def standing_keypoints(height: int, width: int, arm: float = 0.0) -> np.ndarray:
    """(133, 3) keypoints of a person standing in a height x width frame: body and face confident, hands and feet absent."""
    u, v = width / 48, height / 64
    body = [(24, 10), (26, 9), (22, 9), (28, 10), (20, 10), (30, 18), (18, 18), (33 + arm, 26), (15 - arm, 26), (34 + arm, 33),
            (14 - arm, 33), (28, 34), (20, 34), (28, 45), (20, 45), (28, 56), (20, 56)]
    keypoints = np.zeros((133, 3), dtype=np.float32)
    keypoints[:17, :2] = np.array(body) * [u, v]
    angles = np.linspace(0, 2 * np.pi, 68, endpoint=False)
    keypoints[23:91, 0] = (24 + 3 * np.cos(angles)) * u
    keypoints[23:91, 1] = (10 + 3 * np.sin(angles)) * v
    keypoints[:17, 2] = keypoints[23:91, 2] = 1.0
    return keypoints


@pytest.mark.parametrize("conf, strategy", [("onetoall", "token_replace"), ("everanimate", "latent_carry")])
def test_generate_animates_your_own_reference_and_driving_poses(workdir, conf, strategy):
    run = workdir / f"run_{conf}"
    if not (run / "last.ckpt").exists():
        pytest.skip(f"needs the {conf} smoke run")
    inputs = workdir / "custom"
    inputs.mkdir(exist_ok=True)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 30, 3), dtype=np.uint8)).save(inputs / "person.png")
    np.save(inputs / "person_pose.npy", standing_keypoints(40, 30)[None])
    np.save(inputs / "dance.npy", np.stack([standing_keypoints(64, 48, arm=2 * np.sin(i / 2)) for i in range(13)]))
    out = workdir / f"animated_{conf}"
    args = [f"ckpt={run / 'last.ckpt'}", f"reference={inputs / 'person.png'}", f"reference_pose={inputs / 'person_pose.npy'}",
            f"driving={inputs / 'dance.npy'}", "driving_size=[64,48]", "rollout.chunk_frames=9", "sampler.steps=2", f"out={out}", "retarget=ratio"]
    result = subprocess.run([sys.executable, "-m", "experiments.generate", *args], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "inputs.json").read_text())
    assert report["frames"] == 13 and report["size"] == [80, 64] and report["rollout"]["strategy"] == strategy
    assert (out / "generated.mp4").stat().st_size > 0 and (out / "grid.mp4").exists() and (out / "reference_mask.png").exists()
    assert sorted(path.name for path in (out / "chunks").iterdir()) == ["chunk-0000.pt", "chunk-0001.pt"]  # 9 + 4 frames, kept for a resume
    assert np.asarray(Image.open(out / "reference_mask.png")).any()  # the reference is smaller than the driving person: padded
    if conf == "everanimate":  # a driving sequence shorter than one chunk: one chunk, said in one line
        kept = [a for a in args if not a.startswith(("rollout.chunk_frames=", "out="))]
        short = subprocess.run([sys.executable, "-m", "experiments.generate", *kept, "rollout.chunk_frames=17", f"out={out}_short"],
                               cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
        assert short.returncode == 0 and "13 frames, shorter than one chunk (17): generated as one chunk" in short.stdout
    no_pose = subprocess.run([sys.executable, "-m", "experiments.generate", *[a for a in args if not a.startswith("reference_pose=")]],
                             cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert no_pose.returncode != 0 and "reference_pose=FILE" in no_pose.stderr and "Traceback" not in no_pose.stderr
    if conf == "everanimate":  # a reference without a person (no confident keypoint): one line, no generation
        np.save(inputs / "nobody_pose.npy", np.zeros((1, 133, 3), np.float32))
        nobody = [a if not a.startswith("reference_pose=") else f"reference_pose={inputs / 'nobody_pose.npy'}" for a in args]
        result = subprocess.run([sys.executable, "-m", "experiments.generate", *nobody], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
        assert result.returncode == 2 and "cannot place the reference" in result.stderr and "Traceback" not in result.stderr


def test_evaluate_scores_long_clips_at_horizons_with_drift_curves(workdir):
    run = workdir / "run_everanimate"
    if not (run / "last.ckpt").exists():
        pytest.skip("needs the everanimate smoke run")
    out = workdir / "long_eval"
    args = [f"ckpt={run / 'last.ckpt'}", "kind=long", "num_clips=1", "sampler.steps=2", "rollout.chunk_frames=9", "horizons_s=[1,5]",
            "logger=none", f"out={out}", "metrics.names=[psnr,psnr_background]"]
    result = subprocess.run([sys.executable, "-m", "experiments.evaluate", *args], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())["summary"]
    assert summary["1s"]["clips"] == 1 and summary["full"]["clips"] == 1  # 2 s clips at 12 fps: 21 frames
    assert summary["5s"]["clips"] == 0 and summary["5s"]["clips_too_short"] == 1 and "longer than 1 of the clips" in result.stdout + result.stderr
    drift = (out / "drift.csv").read_text().splitlines()
    assert drift[0].startswith("window,start_frame,stop_frame,start_s,clips") and len(drift) == 1 + 21 // 8  # one row per 8-frame chunk
    assert (out / "drift.png").stat().st_size > 0
    assert len(list((out / "clips" / "chunks" / "trained").glob("*/chunk-*.pt"))) == 3  # 9 + 8 + 4 frames, kept for a resume


def test_everanimate_at_real_scale_config_trains_on_a_tiny_wan_animate_checkpoint(workdir, smoke_overrides, tmp_path):
    from test_backbone import ANIMATE_ARCH
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    from animate.backbone import build_transformer
    from animate.weights import save_diffusers

    torch.manual_seed(0)
    root = tmp_path / "Wan2.2-Animate"  # the release's layout: transformer/, image_encoder/, image_processor/
    save_diffusers(build_transformer("animate", **ANIMATE_ARCH, image_dim=8), root / "transformer")
    CLIPVisionModel(CLIPVisionConfig(hidden_size=8, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2, image_size=32,
                                     patch_size=16)).save_pretrained(root / "image_encoder")
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(root / "image_processor")
    run = tmp_path / "run"
    env_root = {"WAN_ROOT": str(tmp_path / "Wan2.2-Animate")}
    result = subprocess.run([sys.executable, "-m", "experiments.fit", "conf=everanimate", "backbone=wan22_animate_14b", "backbone.text.encoder=null",
                             "backbone.gradient_checkpointing=false", *smoke_overrides(workdir, steps=1), f"hydra.run.dir={run}"],
                            cwd=ROOT, env=ENV | env_root, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((run / "summary.json").read_text())["status"] == "finished"


def test_generate_scores_image_pose_transfer_on_held_out_pairs(workdir):
    run = workdir / "run_onetoall"
    if not (run / "last.ckpt").exists():
        pytest.skip("needs the onetoall smoke run")
    out = workdir / "generated_images"
    args = [f"ckpt={run / 'last.ckpt'}", "kind=image", "num_clips=1", "sampler.steps=2", f"out={out}", "models=[trained,repeat_reference]"]
    result = subprocess.run([sys.executable, "-m", "experiments.generate", *args], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "heldout.json").read_text())
    assert report["kind"] == "image" and report["clips"] == 1
    assert len(list((out / "trained").glob("*/frame_*.png"))) == 1  # one-frame targets


def test_a_later_stage_starts_from_the_earlier_stages_weights(workdir, smoke_overrides):
    stage1 = workdir / "run_onetoall_stage1"
    if not (stage1 / "last.ckpt").exists():
        pytest.skip("needs the onetoall_stage1 smoke run")
    run = workdir / "run_stage2_from_stage1"
    result = fit(["conf=onetoall_stage2", *smoke_overrides(workdir, steps=1), f"init_from={stage1}", f"hydra.run.dir={run}"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "initialised" in result.stderr + result.stdout
    earlier = torch.load(stage1 / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    later = torch.load(run / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    assert set(earlier) <= set(later)  # stage 1's weights travel on, trained further or kept
    # UniAnimate's pose encoders have no place here (FramePrompt's full fine-tune would load: it is the backbone's weights)
    bad = fit(["conf=onetoall_stage2", *smoke_overrides(workdir, steps=1), f"init_from={workdir / 'run_unianimate'}", f"hydra.run.dir={workdir / 'bad'}"])
    assert bad.returncode == 2 and "another method" in bad.stderr and "Traceback" not in bad.stderr


def test_context_parallel_generation_shares_each_clip_over_two_processes_with_the_same_frames(workdir):
    run = workdir / "run_unianimate"
    if not (run / "last.ckpt").exists():
        pytest.skip("needs the unianimate smoke run")
    outs = {}
    for name, extra in (("single", ["trainer=cpu"]), ("context_parallel", ["trainer=ddp_cpu", "context_parallel.ulysses=2"])):
        outs[name] = workdir / f"generated_{name}"
        command = [sys.executable, "-m", "experiments.generate", f"ckpt={run / 'last.ckpt'}", "num_clips=2", "batch_size=1", "sampler.steps=2",
                   "models=[trained]", "grids=false", f"out={outs[name]}", *extra]
        result = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
    single, split = (sorted((outs[name] / "trained").rglob("*.png")) for name in ("single", "context_parallel"))
    assert len(single) == 10 and [p.relative_to(outs["single"]) for p in single] == [p.relative_to(outs["context_parallel"]) for p in split]
    for a, b in zip(single, split):  # the tiny default's 5 heads over 2 processes: diffusers pads them ("Ulysses anything")
        assert np.abs(np.asarray(Image.open(a)).astype(int) - np.asarray(Image.open(b)).astype(int)).max() <= 1
