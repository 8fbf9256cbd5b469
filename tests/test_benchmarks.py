"""The benchmark scripts run end to end on tiny inputs and report well-formed numbers."""

import math

import torch


def test_train_step_reports_a_breakdown(workdir, smoke_overrides):
    from benchmarks.train_step import main

    overrides = [o for o in smoke_overrides(workdir) if not o.startswith(("trainer.", "logger="))]
    result = main(["conf=frameprompt", *overrides, "--steps", "2", "--warmup", "1"])
    assert result["batch"][:3] == [2, 3, 5]  # (B, 3, T) of the smoke data
    assert result["trainable_parameters"] > 0
    for key in ("data_batch_s", "vae_encode_s", "dit_step_s_median"):
        assert 0 < result[key] < 60
    assert math.isclose(result["dit_steps_per_s"], 1 / result["dit_step_s_median"], rel_tol=1e-2)


def test_vae_probe_reports_psnr_per_window(tmp_path):
    from benchmarks.vae_probe import main
    from data.synthetic import SyntheticConfig, generate_dataset

    config = SyntheticConfig(train_clips=1, val_clips=0, test_clips=1, train_pairs=0, val_pairs=0, test_pairs=0, frames=5, size=64, long_clips=0)
    generate_dataset(tmp_path / "data", config, progress=False)
    results = main(["--lrs", "1e-3", "--steps", "3", "--batch", "2", "--side", "32", "--", f"dataset={tmp_path / 'data'}", "base_dim=4"])
    assert list(results) == ["0.001"] and len(results["0.001"]) == 1
    assert 5 < results["0.001"][0] < 40


def test_vae_ceiling_scores_the_truth_perfectly_and_the_round_trip_below_it():
    from benchmarks.vae_ceiling import main

    result = main(["--clips", "1", "--thresholds", "0.1", "0.2", "--stills"])
    assert result["truth"]["silhouette_iou@0.1"] == 1.0 and result["truth"]["psnr"] == 100.0
    # frames encoded alone carry no motion to compress: the shipped 4x-in-time VAE keeps more of the moving person so
    assert result["asset:tiny_wan_vae@stills"]["psnr_mask"] > result["asset:tiny_wan_vae"]["psnr_mask"] + 1
    shipped = result["asset:tiny_wan_vae"]
    assert 10 < shipped["psnr"] < 40 and all(0 <= shipped[f"silhouette_iou@{t}"] <= 1 for t in ("0.1", "0.2"))
    assert 0 <= result["repeat_reference"]["silhouette_iou@0.1"] < 1


class FrameSubsamplingVAE:
    """A stand-in causal VAE whose latent frames are pixel frames 0, 4, 8, ...: a still image has one encoding."""

    def encode(self, video):
        return video[:, :, ::4]

    def decode(self, latents):
        return torch.cat([latents[:, :, :1], latents[:, :, 1:].repeat_interleave(4, dim=2)], dim=2)


def test_vae_still_is_zero_for_one_encoding_and_reports_the_shipped_vae():
    from benchmarks.vae_still import main, still_scores

    scores = still_scores(FrameSubsamplingVAE(), torch.rand(3, 16, 16))
    assert all(scores[f"image_vs_still@{k}"] == 0 and scores[f"still_step@{k}"] == 0 for k in range(1, 5))
    assert scores["psnr_still"] == scores["psnr_repeat"] == 100.0
    shipped = main(["--clips", "1"])["asset:tiny_wan_vae"]
    assert set(shipped) == set(scores) and all(v >= 0 for v in shipped.values())
    assert 10 < shipped["psnr_still"] < 40


def test_loss_curve_averages_training_loss_per_window_and_keeps_validation(tmp_path):
    from benchmarks.loss_curve import main

    log = tmp_path / "csv" / "version_0" / "metrics.csv"
    log.parent.mkdir(parents=True)
    log.write_text(
        "epoch,lr-AdamW,step,train/loss,val/loss\n"
        ",0.001,9,,\n0,,9,2.0,\n0,,19,1.0,\n,0.0005,19,,\n0,,19,,0.5\n0,,29,0.25,\n"
    )
    table = main([str(tmp_path), "--every", "20"]).splitlines()
    assert table[0] == "| step | train/loss | lr | val/loss |"
    assert table[2] == "| 20 | 1.5 | 0.0005 | 0.5 |" and table[3] == "| 40 | 0.25 |  |  |"


def test_loss_curve_joins_the_logs_of_a_resumed_run(tmp_path):
    from benchmarks.loss_curve import read_log

    log = tmp_path / "csv"
    log.mkdir()
    (log / "metrics.0.csv").write_text("step,train/loss\n9,4.0\n19,3.0\n29,2.0\n")  # killed after step 29, saved at 20
    (log / "metrics.1.csv").write_text("step,train/loss\n29,1.0\n39,1.0\n")  # killed again, saved at 40
    (log / "metrics.csv").write_text("step,train/loss\n49,0.5\n")
    assert [(row["step"], row["train/loss"]) for row in read_log(tmp_path)] == [("9", "4.0"), ("19", "3.0"), ("29", "1.0"), ("39", "1.0"), ("49", "0.5")]


def test_latent_person_mask_marks_cells_the_person_touches_in_their_frames():
    import torch

    from benchmarks.velocity_error import latent_person_mask

    mask = torch.zeros(1, 9, 8, 8, dtype=torch.bool)
    mask[0, 3, 5, 1] = True  # frame 3 belongs to latent frame 1 (frames 1-4)
    cells = latent_person_mask(mask, (3, 2, 2), vae_time=4)
    assert cells.shape == (1, 3, 2, 2)
    assert cells[0, 1, 1, 0] == 1 and cells.sum() == 1


def test_long_video_seams_and_seam_jump():
    from benchmarks.long_video import seam_frames, seam_report

    assert seam_frames(41, 17, 5) == [17, 29]  # segments [0, 17), [12, 29), [24, 41)
    assert seam_frames(34, 17, 0) == [17]
    assert seam_frames(17, 17, 5) == []
    g = torch.Generator().manual_seed(0)
    target = torch.rand(3, 30, 8, 8, generator=g) * 0.2 - 0.1
    video = target.clone()
    video[:, 17:] += 0.5  # a jump where the second segment starts
    report = seam_report(video, target, torch.ones(30, 8, 8, dtype=torch.bool), [17])
    assert report["seam_jump"] > 0.2 and report["seams"] == 1 and len(report["psnr_by_quarter"]) == 4
    assert report["psnr_by_quarter"][0] > report["psnr_by_quarter"][3]  # the shifted second half scores lower
    smooth = seam_report(target.clone(), target, torch.ones(30, 8, 8, dtype=torch.bool), [17])
    assert abs(smooth["seam_jump"]) < 1e-6 and smooth["psnr"] > 60


def test_drift_compares_rollouts_at_horizons_and_per_chunk(workdir, smoke_overrides, tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    from benchmarks.drift import main

    run = workdir / "run_everanimate"
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    fitted = subprocess.run([sys.executable, "-m", "experiments.fit", "conf=everanimate", *smoke_overrides(workdir), f"hydra.run.dir={run}"],
                            cwd=Path(__file__).resolve().parent.parent, env=env, capture_output=True, text=True, timeout=600)
    assert fitted.returncode == 0, fitted.stderr[-3000:]
    ckpt = run / "last.ckpt"
    out = tmp_path / "drift.json"
    report = main([f"latent={ckpt}:latent_carry", f"image={ckpt}:image_carry", "--seeds", "0", "1", "--horizons", "1",
                   "--steps", "2", "--chunk-frames", "9", "--out", str(out)])
    for label in ("latent", "image"):
        entry = report["entries"][label]
        assert set(entry["horizons"]) == {"full", "1s"} and entry["window_frames"] == 8
        assert entry["horizons"]["1s"]["psnr_background"]["std"] >= 0 and len(entry["drift"]) == 21 // 8
    assert out.is_file() and (tmp_path / "drift_psnr_background.png").is_file()


def test_inference_benchmark_times_each_cfg_setting_and_says_it_ran_scaled_down_on_cpu():
    from benchmarks.inference import guidance_settings, main

    assert guidance_settings(1) == [[]] and guidance_settings(3) == [[1.0, 1.0], [1.5, 1.5], [1.5, 2.5]]  # 1, 2, 3 passes (Eq. 16)
    report = main(["conf=onetoall", "--steps", "3", "--guidance", "1,1", "1.5,2.5", "--cache-threshold", "1e9"])
    assert report["scaled_down"] and report["shape"]["frames"] == 9 and report["random_weights"] == []
    assert [r["passes_per_step"] for r in report["results"]] == [1.0, 3.0]
    assert all(r["wall_s"] > 0 and r["step_s_median"] > 0 and r["reused_fraction"] == round(2 / 3, 3) for r in report["results"])


def test_training_benchmark_counts_model_flops_linear_in_the_batch():
    from benchmarks.training import main, model_flops

    one, two = (model_flops(["conf=unianimate"], batch, 5, 64, 64) for batch in (1, 2))
    assert one > 0 and two == 2 * one
    report = main(["conf=unianimate", "--steps", "1", "--warmup", "0"])
    assert report["scaled_down"] and report["mfu"] is None and report["clips_per_s"] > 0 and report["model_tflops_per_step"] > 0


def test_fit_speed_reads_steps_per_second_from_real_fits(workdir, smoke_overrides, tmp_path, monkeypatch):
    import json

    from benchmarks.fit_speed import main

    monkeypatch.setenv("ANIMATE_CACHE", str(tmp_path / "cache"))
    overrides = [o for o in smoke_overrides(workdir) if not o.startswith(("trainer.max_steps", "hydra."))]
    result = main(["conf=unianimate", *overrides, "--steps", "2", "--repeats", "2", "--warmup", "0", "--out", str(tmp_path / "speed.json")])
    (row,) = result["versions"]
    assert len(row["steps_per_sec"]) == 2 and all(rate > 0 for rate in row["steps_per_sec"]) and row["peak_rss_mb_max"] > 0
    assert json.loads((tmp_path / "speed.json").read_text()) == result


def test_learnability_scores_fit_transfer_and_the_swap_test(workdir, smoke_overrides, tmp_path):
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from benchmarks.learnability import identity_of, main, swap_partners, with_reference_of

    assert identity_of("puppet-s0-test-c00012-clip") == identity_of("puppet-s0-test-c00012-long") == "puppet-s0-test-c00012"
    assert identity_of("test-puppet-s0-00056-clip03") == identity_of("test-puppet-s0-00056-pair00-b") == "test-puppet-s0-00056"
    clips = [{"key": [key], "video": torch.zeros(1, 3, 5, 8, 8), "reference": torch.full((1, 3, 8, 8), float(i))}
             for i, key in enumerate(["a-clip00", "a-clip01", "b-clip00", "a-clip02"])]
    assert swap_partners(clips) == [2, 2, 0, 2]  # half the list away first, never the same identity
    assert float(with_reference_of(clips[0], clips[2])["reference"].mean()) == 2.0

    run = workdir / "run_frameprompt_learnability"
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    fitted = subprocess.run([sys.executable, "-m", "experiments.fit", "conf=frameprompt", *smoke_overrides(workdir),
                             f"hydra.run.dir={run}"], cwd=Path(__file__).resolve().parent.parent, env=env, capture_output=True, text=True, timeout=600)
    assert fitted.returncode == 0, fitted.stderr[-3000:]
    out = tmp_path / "learnability.json"
    report = main([str(run / "last.ckpt"), "--clips", "2", "--times", "0.5", "0.9", "--generate", "1", "--out", str(out)])
    assert report["method"] == "FramePrompt" and json.loads(out.read_text()) == json.loads(json.dumps(report))
    for model in ("trained", "untrained"):
        for split in ("train", "test"):
            person = report["errors"][model][split]["person"]
            assert len(person) == 2 and all(value > 0 for value in person)
        swap = report["swap_denoising"][model]
        assert swap["clips"] >= 2 and math.isclose(swap["ratio"], swap["right"] / swap["swapped"])
    # FramePrompt reads its reference in context from the start: another identity's reference changes its error
    assert report["swap_denoising"]["untrained"]["right"] != report["swap_denoising"]["untrained"]["swapped"]
    generated = report["swap_generated"]
    assert generated["clips"] == 1 and generated["right"] > 0 and generated["swapped"] > 0 and generated["repeat_reference"] > 0
