"""``python -m experiments.evaluate`` and the evaluation behind it: folders of synthetic clips, and a run's checkpoint."""

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image

from experiments.evaluate import mode
from metrics.evaluation import log_report, run_evaluation

ROOT = Path(__file__).resolve().parent.parent
CODECS = {".mp4": ("libx264", "yuv420p"), ".webm": ("libvpx-vp9", "yuv420p"), ".gif": ("gif", "rgb8")}


def moving_clip(seed: int, frames: int = 12, height: int = 32, width: int = 48) -> np.ndarray:
    """uint8 ``(T, H, W, 3)``: a smooth random image drifting by one pixel per frame."""
    base = np.random.default_rng(seed).random((height // 4, width // 4 + frames, 3))
    image = np.kron(base, np.ones((4, 4, 1)))
    return np.stack([(image[:, t : t + width] * 255).astype(np.uint8) for t in range(frames)])


def noisy(frames: np.ndarray, seed: int, amount: float = 6.0) -> np.ndarray:
    """``frames`` plus Gaussian noise, uint8."""
    noise = np.random.default_rng(seed).normal(0, amount, frames.shape)
    return np.clip(frames + noise, 0, 255).astype(np.uint8)


def write_clip(path: Path, frames: np.ndarray, fps: int = 10) -> Path:
    """A video file (by suffix) or, without a suffix, a folder of PNG frames."""
    if not path.suffix:
        path.mkdir(parents=True)
        for index, frame in enumerate(frames):
            Image.fromarray(frame).save(path / f"frame_{index}.png")
        return path
    codec, pix_fmt = CODECS[path.suffix]
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], pix_fmt
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path


def face_keypoints(frames: int) -> np.ndarray:
    """``(T, 133, 3)`` keypoints with a confident face in the middle of a 48 x 32 frame; frame 0 faceless."""
    keypoints = np.zeros((frames, 133, 3), np.float32)
    keypoints[:, 23:91, 0] = np.linspace(16, 30, 68)
    keypoints[:, 23:91, 1] = np.linspace(10, 22, 68)
    keypoints[1:, 23:91, 2] = 0.9
    return keypoints


def compose_conf(name: str, overrides: list[str]):
    """A conf/ file composed as the command line would."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(name, overrides=overrides)


def config(generated: Path, target: Path, *overrides: str):
    """conf/evaluate.yaml in folder mode, without a logger."""
    return compose_conf("evaluate", [f"generated={generated}", f"target={target}", "logger=none", *overrides])


def read_rows(path: Path) -> list[dict]:
    """A CSV as dicts."""
    with path.open() as file:
        return list(csv.DictReader(file))


def test_videos_and_frame_folders_pair_by_name(tmp_path):
    for index, name in enumerate(["a.mp4", "b.webm", "c.gif", "d"]):
        frames = moving_clip(index)
        write_clip(tmp_path / "gt" / name, frames)
        write_clip(tmp_path / "gen" / name, noisy(frames, index))
    write_clip(tmp_path / "gt" / "unused.mp4", moving_clip(9))  # ground truth without a generated clip
    rows, summary = run_evaluation(config(tmp_path / "gen", tmp_path / "gt"), tmp_path / "out")
    assert sorted(row["clip"] for row in rows) == ["a", "b", "c", "d"]
    assert summary["full"]["clips"] == 4
    assert 20 < summary["full"]["psnr"] < 60 and 0 < summary["full"]["ssim"] < 1
    assert {row["clip"] for row in read_rows(tmp_path / "out" / "per_clip.csv")} == {"a", "b", "c", "d"}
    report = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert report["summary"]["full"]["psnr"] == pytest.approx(summary["full"]["psnr"])
    assert report["metrics"]["names"] == ["psnr", "ssim"]


def test_lossless_frames_give_the_exact_psnr(tmp_path):
    target = moving_clip(0)
    generated = np.clip(target.astype(int) + 3, 0, 255).astype(np.uint8)
    write_clip(tmp_path / "gt" / "x", target)
    write_clip(tmp_path / "gen" / "x", generated)
    _, summary = run_evaluation(config(tmp_path / "gen" / "x", tmp_path / "gt" / "x"), tmp_path / "out")
    mse = ((generated.astype(float) - target) / 255) ** 2
    assert summary["full"]["psnr"] == pytest.approx(np.mean(-10 * np.log10(mse.mean(axis=(1, 2, 3)))), abs=1e-6)


def test_horizons_take_prefixes_and_count_clips_too_short(tmp_path):
    for name, frames in (("short", 10), ("long", 20)):
        clip = moving_clip(frames, frames=frames)
        write_clip(tmp_path / "gt" / name, clip)
        write_clip(tmp_path / "gen" / name, noisy(clip, 1))
    cfg = config(tmp_path / "gen", tmp_path / "gt", "fps=10", "horizons_s=[1,1.5]")
    rows, summary = run_evaluation(cfg, tmp_path / "out")
    assert (summary["1s"]["clips"], summary["1.5s"]["clips"], summary["1.5s"]["clips_too_short"]) == (2, 1, 1)
    assert {(row["clip"], row["horizon"], row["frames"]) for row in rows} == {
        ("short", "full", 10), ("long", "full", 20), ("short", "1s", 10), ("long", "1s", 10), ("long", "1.5s", 15),
    }  # fmt: skip
    assert [row["horizon"] for row in read_rows(tmp_path / "out" / "summary.csv")] == ["full", "1s", "1.5s"]


def test_size_mismatch_is_refused_or_resized(tmp_path):
    write_clip(tmp_path / "gt" / "x", moving_clip(0))
    write_clip(tmp_path / "gen" / "x", moving_clip(0, height=16, width=24))
    with pytest.raises(ValueError, match=r"x: generated frames are \(16, 24\), ground truth \(32, 48\)"):
        run_evaluation(config(tmp_path / "gen", tmp_path / "gt"), tmp_path / "out")
    _, summary = run_evaluation(config(tmp_path / "gen", tmp_path / "gt", "on_size_mismatch=resize"), tmp_path / "out")
    assert summary["full"]["clips"] == 1


def test_length_mismatch_is_truncated_or_refused(tmp_path):
    clip = moving_clip(0, frames=12)
    write_clip(tmp_path / "gt" / "x", clip)
    write_clip(tmp_path / "gen" / "x", clip[:9])
    rows, _ = run_evaluation(config(tmp_path / "gen", tmp_path / "gt"), tmp_path / "out")
    assert rows[0]["frames"] == 9 and rows[0]["psnr"] == 100.0
    with pytest.raises(ValueError, match="generated has 9 frames, ground truth 12"):
        run_evaluation(config(tmp_path / "gen", tmp_path / "gt", "on_length_mismatch=error"), tmp_path / "out")


def test_fpsnr_and_masked_psnr_read_the_ground_truth_sidecars(tmp_path):
    clip = moving_clip(0, frames=6)
    write_clip(tmp_path / "gt" / "x", clip)
    write_clip(tmp_path / "gen" / "x", noisy(clip, 0))
    cfg = config(tmp_path / "gen", tmp_path / "gt", "metrics.names=[fpsnr,psnr_mask]")
    with pytest.raises(FileNotFoundError, match="x.pose.npy"):
        run_evaluation(cfg, tmp_path / "out")
    np.save(tmp_path / "gt" / "x.pose.npy", face_keypoints(6))
    mask = np.zeros((6, 32, 48), bool)
    mask[:, 8:24, 12:36] = True
    np.save(tmp_path / "gt" / "x.mask.npy", np.packbits(mask, axis=-1))
    _, summary = run_evaluation(cfg, tmp_path / "out")
    assert summary["full"]["fpsnr_skipped_frames"] == 1
    assert 20 < summary["full"]["fpsnr"] < 60 and 20 < summary["full"]["psnr_mask"] < 60


def test_a_bad_sidecar_is_named(tmp_path):
    clip = moving_clip(0, frames=4)
    write_clip(tmp_path / "gt" / "x", clip)
    write_clip(tmp_path / "gen" / "x", clip)
    np.save(tmp_path / "gt" / "x.pose.npy", np.zeros((3, 133, 3), np.float32))
    with pytest.raises(ValueError, match=r"x.pose.npy: keypoints shape \(3, 133, 3\), expected \(4, 133, 3\)"):
        run_evaluation(config(tmp_path / "gen", tmp_path / "gt", "metrics.names=[fpsnr]"), tmp_path / "out")


def test_generated_clips_without_ground_truth_are_listed(tmp_path):
    write_clip(tmp_path / "gt" / "a", moving_clip(0, frames=2))
    write_clip(tmp_path / "gen" / "b", moving_clip(0, frames=2))
    with pytest.raises(ValueError, match="1 generated clip.*: b"):
        run_evaluation(config(tmp_path / "gen", tmp_path / "gt"), tmp_path / "out")


def test_an_undecodable_video_is_named(tmp_path):
    write_clip(tmp_path / "gt" / "a", moving_clip(0, frames=2))
    (tmp_path / "gen").mkdir()
    (tmp_path / "gen" / "a.mp4").write_bytes(b"not a video")
    with pytest.raises(ValueError, match="a.mp4: unreadable video"):
        run_evaluation(config(tmp_path / "gen", tmp_path / "gt"), tmp_path / "out")


def test_log_report_sends_the_summary_to_a_csv_logger(tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    logger = CSVLogger(save_dir=tmp_path, name="csv", version="")
    log_report(logger, [{"clip": "a", "horizon": "full", "psnr": 30.0}], {"full": {"clips": 1, "psnr": 30.0}})
    logged = read_rows(tmp_path / "csv" / "metrics.csv")
    assert float(logged[0]["eval/full/psnr"]) == 30.0


def test_the_command_runs_end_to_end_and_logs_to_offline_wandb(tmp_path):
    for index in range(2):
        frames = moving_clip(index, frames=20)
        write_clip(tmp_path / "gt" / f"clip{index}.mp4", frames)
        write_clip(tmp_path / "gen" / f"clip{index}.mp4", noisy(frames, index))
    out = tmp_path / "run"
    command = [
        sys.executable, "-m", "experiments.evaluate", f"generated={tmp_path / 'gen'}", f"target={tmp_path / 'gt'}",
        f"out={out}", "horizons_s=[1]", "fps=10",
    ]  # fmt: skip
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DIR": str(tmp_path)}
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())["summary"]
    assert summary["full"]["clips"] == 2 and summary["1s"]["clips"] == 2
    assert len(read_rows(out / "per_clip.csv")) == 4
    assert list((out / "wandb").glob("offline-run-*"))
    assert (out / ".hydra" / "config.yaml").is_file()


@pytest.fixture(scope="module")
def checkpoint(workdir, smoke_overrides) -> Path:
    """An untrained FramePrompt checkpoint holding what experiments.fit writes into one (the trainable
    weights and the run config), on the tiny dataset and VAE: seconds instead of a training run."""
    run_dir = workdir / "run_frameprompt"
    cfg = compose_conf("frameprompt", [*smoke_overrides(workdir), f"paths.run_dir={run_dir}", "run_name=frameprompt"])
    torch.manual_seed(0)
    system = instantiate(cfg.method)
    system.run_config = OmegaConf.to_container(cfg, resolve=True)
    content = {"state_dict": system.state_dict(), "global_step": 2}
    system.on_save_checkpoint(content)  # keeps the trainable weights, adds run_config, as Lightning's save does
    run_dir.mkdir()
    torch.save(content, run_dir / "last.ckpt")
    return run_dir / "last.ckpt"


def test_a_checkpoint_generates_and_scores_its_heldout_clips(checkpoint, tmp_path):
    out = tmp_path / "eval"
    names = ["psnr", "ssim", "psnr_mask", "fpsnr"]  # the batch's person masks and keypoints feed the last two
    command = [
        sys.executable, "-m", "experiments.evaluate", f"ckpt={checkpoint}", "split=test", "num_clips=2", "sampler.steps=2",
        f"metrics.names=[{','.join(names)}]", "fps=12", "horizons_s=[0.25]", f"out={out}", "logger=csv",
    ]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "summary.json").read_text())
    assert (report["ckpt"], report["split"], report["global_step"], report["sampler"]["steps"]) == (str(checkpoint), "test", 2, 2)
    full = report["summary"]["full"]
    assert full["clips"] == 2 and report["summary"]["0.25s"]["clips"] == 2  # 5-frame clips, 3-frame horizon
    assert all(math.isfinite(full[name]) for name in names)
    assert full["psnr_mask_skipped_frames"] == 0  # the synthetic shards carry real person masks
    rows = read_rows(out / "per_clip.csv")
    assert list(rows[0]) == ["clip", "horizon", "frames", *names]
    assert sorted((row["horizon"], row["frames"]) for row in rows) == [("0.25s", "3")] * 2 + [("full", "5")] * 2
    assert all(math.isfinite(float(row[name])) for row in rows for name in names)
    assert [row["horizon"] for row in read_rows(out / "summary.csv")] == ["full", "0.25s"]
    assert float(read_rows(out / "csv" / "metrics.csv")[0]["eval/full/psnr"]) == pytest.approx(full["psnr"])

    # the kept clips are the scored ones: the folder mode scores them identically (lossless frames)
    cfg = config(out / "clips" / "trained", out / "clips" / "target", f"metrics.names=[{','.join(names)}]")
    folder_rows, folder_summary = run_evaluation(cfg, tmp_path / "rescored")
    assert {row["clip"] for row in folder_rows} == {row["clip"] for row in rows}
    assert folder_summary["full"]["psnr"] == pytest.approx(full["psnr"], abs=1e-6)


@pytest.mark.parametrize(
    "overrides, given",
    [([], "neither"), (["generated=a", "target=b", "ckpt=c"], "generated, target, ckpt"), (["generated=a"], "generated")],
)
def test_evaluate_takes_exactly_one_mode(overrides, given, capsys):
    with pytest.raises(SystemExit) as exit_info:
        mode(compose_conf("evaluate", ["logger=none", *overrides]))
    assert exit_info.value.code == 2
    message = capsys.readouterr().err
    assert message.count("\n") == 1 and "generated=DIR target=DIR" in message and "ckpt=RUN/last.ckpt" in message
    assert message.strip().endswith(f"given: {given}")


def test_the_command_reports_a_missing_mode_in_one_line(tmp_path):
    command = [sys.executable, "-m", "experiments.evaluate", "logger=none", f"out={tmp_path}"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0
    assert result.stderr.startswith("error: evaluate takes either generated=DIR target=DIR")
