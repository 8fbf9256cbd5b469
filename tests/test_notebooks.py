"""The leaderboard engine and every notebook, executed headless on runs with known scores; the HTML export."""

import json
import math
import random
from pathlib import Path

import nbformat
import numpy as np
import pytest
import yaml
from nbclient import NotebookClient
from PIL import Image

from experiments import leaderboard as lb

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
TARGETS = {"unianimate": "UniAnimate", "frameprompt": "FramePrompt", "onetoall": "OneToAll", "everanimate": "EverAnimate"}


def make_run(root: Path, sweep: str, conf: str, variant: str, seed: int, parameters: dict, psnr: float, long_psnr: float | None = None) -> Path:
    """A finished sweep run as experiments.sweep leaves it: hydra configs, result.json, a grid, and the long clip's drift curve."""
    run_dir = root / sweep / f"{conf}-{variant}-{seed}-{len(list((root / sweep).glob('*'))) if (root / sweep).exists() else 0}"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"seed": seed, "method": {"_target_": f"animate.methods.{conf}.{TARGETS[conf]}"}}))
    (run_dir / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"job": {"config_name": conf}, "runtime": {"choices": {"variant": variant}}}}))
    metrics = {}
    for model, offset in {"trained": 0.0, "untrained": -3.0, "base": -3.0, "repeat_reference": -1.0}.items():
        metrics |= {f"test/{model}/psnr": psnr + offset, f"test/{model}/psnr_mask": psnr + offset - 6, f"test/{model}/ssim_mask": (psnr + offset) / 100,
                    f"test/{model}/fpsnr": psnr + offset - 7, f"test/{model}/silhouette_iou": (psnr + offset) / 40}
    if long_psnr is not None:
        metrics |= {"test_long/trained/psnr": long_psnr, "test_long/trained/psnr@10s": long_psnr + 0.5, "test_long/trained/psnr_background": long_psnr + 2,
                    "test_long/trained/psnr_drift": long_psnr - 18.0}
        (run_dir / "heldout_long").mkdir()
        lines = ["window,start_frame,stop_frame,start_s,clips,psnr"] + [f"{i},{16 * i},{16 * i + 16},{16 * i / 12:.3f},1,{long_psnr - 0.02 * i}" for i in range(10)]
        (run_dir / "heldout_long" / "drift.csv").write_text("\n".join(lines) + "\n")
    grids = run_dir / "heldout_video" / "grids" / "trained"
    grids.mkdir(parents=True)
    Image.fromarray(np.full((16, 64, 3), 40 * seed, np.uint8)).save(grids / "clip.png")
    protocols = {"video": "synthetic v1"} | ({"long": "framework v1"} if long_psnr is not None else {})
    (run_dir / "result.json").write_text(json.dumps({"sweep": sweep, "run_id": run_dir.name, "parameters": parameters | {"seed": seed}, "metrics": metrics,
                                                     "protocols": protocols}))
    return run_dir


def noise(seed: int, scale: float = 0.05) -> float:
    return random.Random(seed * 7919 + int(scale * 1000)).uniform(-scale, scale)


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory) -> Path:
    """Runs of every sweep, 3 seeds, with effects the claims' verdicts must find (clear gains, clear losses, nothing)."""
    root = tmp_path_factory.mktemp("sweeps")
    for seed in range(3):
        for conf, psnr in {"unianimate": 16.5, "frameprompt": 17.4, "onetoall": 18.0, "everanimate": 18.1}.items():
            make_run(root, "leaderboard", conf, "none", seed, {"conf": conf}, psnr + noise(seed), long_psnr=17.0 + noise(seed + 1))
        for rank in (0, 16):
            for loss in ("half", "all"):
                psnr = 18.0 - (1.0 if loss == "all" else 0.0) + (0.3 if rank else 0.0) + noise(seed + rank)  # half beats all; LoRA beats full (refutes)
                make_run(root, "frameprompt_table1", "frameprompt", "none", seed, {"method.lora.rank": rank, "method.loss_frames": loss}, psnr)
        for variant, psnr in {"none": 17.0, "unianimate_pose_layers_5": 16.0, "unianimate_no_reference_pose": 17.0, "unianimate_no_condition_dropout": 17.0}.items():
            make_run(root, "unianimate_ablations", "unianimate", variant, seed, {"variant": variant}, psnr + noise(seed + len(variant)))
        for variant, psnr in {"onetoall_no_reference_extractor": 16.5, "onetoall_base_extractor": 17.5, "onetoall_face_enhancement": 17.0, "none": 18.0, "onetoall_no_region_weights": 18.0}.items():
            make_run(root, "onetoall_table3", "onetoall", variant, seed, {"variant": variant}, psnr + noise(seed + len(variant)))
        for variant in ("none", "onetoall_full_rope"):  # the long-clip sweep: its full-method runs score 3 dB below Table 3's, which no Table 3 claim may see
            make_run(root, "onetoall_tables_3_5", "onetoall", variant, seed, {"variant": variant}, 15.0 + noise(seed + len(variant)),
                     long_psnr=(15.0 if variant == "onetoall_full_rope" else 17.0) + noise(seed))
        for variant, long_psnr in {"everanimate_plp": 17.0, "none": 17.5, "everanimate_identity_views_1": 17.5, "everanimate_motion_latents_2": 17.5, "everanimate_no_memory_augmentation": 17.5}.items():
            make_run(root, "everanimate_table2", "everanimate", variant, seed, {"variant": variant}, 18.0 + noise(seed), long_psnr=long_psnr + noise(seed + len(variant)))
    return root


def test_interval_is_the_student_t_interval_over_seeds():
    mean, half, n = lb.interval([1.0, 2.0, 3.0])
    assert (mean, n) == (2.0, 3) and half == pytest.approx(4.302653 / math.sqrt(3), rel=1e-5)
    assert math.isnan(lb.interval([5.0])[1])
    assert lb.interval([float("nan"), 4.0, 6.0]) == (5.0, pytest.approx(12.7062, rel=1e-4), 2)  # NaN dropped; stdev sqrt(2), t(0.975, 1)


def test_verdicts_pair_seeds_and_respect_the_metric_direction():
    runs = lb.pd.DataFrame([{"seed": s, "v": v, "test/trained/psnr": p, "test/trained/lpips": lp}
                            for s in range(3) for v, p, lp in (("a", 18 + 0.1 * s, 0.2), ("b", 17 + 0.1 * s + 0.01 * (s == 1), 0.3))])
    assert lb.verdict(runs, lb.Claim("a beats b", "test/trained/psnr", {"v": "a"}, {"v": "b"}))["verdict"] == "reproduced"
    assert lb.verdict(runs, lb.Claim("b beats a", "test/trained/psnr", {"v": "b"}, {"v": "a"}))["verdict"] == "refuted"
    assert lb.verdict(runs, lb.Claim("a has lower LPIPS", "test/trained/lpips", {"v": "a"}, {"v": "b"}))["effect"] == pytest.approx(0.1)
    assert lb.verdict(runs, lb.Claim("unmeasured", "test/trained/fvd", {"v": "a"}, {"v": "b"}))["verdict"] == "not measured"
    two_seeds = lb.verdict(runs[runs["seed"] < 2], lb.Claim("a beats b", "test/trained/psnr", {"v": "a"}, {"v": "b"}))
    assert (two_seeds["verdict"], two_seeds["seeds"]) == ("not enough seeds (2 of 3)", 2)  # a verdict needs 3 seeds paired


def test_leaderboard_rows_hold_the_method_and_every_baseline(runs_root):
    runs = lb.load_runs(runs_root / "leaderboard")
    board = lb.table(lb.leaderboard(runs, by=["method"]), by=["method"])
    methods = ("UniAnimate-DiT", "FramePrompt", "One-to-All", "EverAnimate")
    assert set(board.index) == {(m, model, "synthetic v1") for m in methods for model in lb.MODELS}  # the protocol beside every number
    assert board.loc[("FramePrompt", "trained", "synthetic v1"), "psnr"].startswith("17.4")
    with pytest.raises(FileNotFoundError, match="no finished sweep runs"):
        lb.load_runs(runs_root / "nothing")


def test_a_table_that_spans_two_sweeps_reads_both_folders(runs_root):
    both = lb.runs_folders([runs_root / "onetoall_table3", runs_root / "onetoall_tables_3_5"])
    runs = lb.load_runs(both)
    assert sorted(runs.groupby("sweep").size().items()) == [("onetoall_table3", 15), ("onetoall_tables_3_5", 6)]
    assert len(lb.load_runs(lb.runs_folders([runs_root / "onetoall_table3", runs_root / "not_run_yet"]))) == 15  # a sweep not run yet adds nothing
    full = lb.Claim("region weights help the face", "test/trained/fpsnr", {"variant": "none"}, {"variant": "onetoall_no_region_weights"})
    assert lb.verdict(runs, full)["effect"] < -1  # the long-clip sweep's full runs pulled in: why Table 3's claims name their sweep
    table3 = lb.Claim(full.name, full.metric, {"sweep": "onetoall_table3", "variant": "none"}, {"sweep": "onetoall_table3", "variant": "onetoall_no_region_weights"})
    assert lb.verdict(runs, table3)["verdict"] == "inconclusive at this scale"


def _outputs(nb) -> str:
    """Every text and HTML output of an executed notebook."""
    texts = []
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            texts += [output.get("text", ""), data.get("text/plain", ""), data.get("text/html", ""), data.get("text/markdown", "")]
    return "\n".join(texts)


SWEEPS = {"onetoall_tables_3_5": ["onetoall_table3", "onetoall_tables_3_5"]}  # a notebook whose table spans sweeps -> their folders
EXPECTED = {  # notebook -> what its executed tables must show
    "leaderboard": ["UniAnimate-DiT", "EverAnimate", "repeat_reference", "psnr@10s", "image/png", "synthetic v1", "framework v1"],
    "frameprompt_table1": ["LoRA 16", "half-frames loss beats all-frames (full fine-tune), PSNR", "reproduced", "refuted"],
    "unianimate_ablations": ["5-layer pose encoder", "fewer pose-encoder layers hurt", "reproduced", "inconclusive at this scale"],
    "onetoall_tables_3_5": ["Base Ref. Extractor", "no Ref. Extractor", "the Reference Extractor beats the first-frame prior", "f = 0 extrapolates", "reproduced", "inconclusive at this scale",
                            "full (f = 0), long-clip sweep", "**21 finished runs**"],
    "everanimate_table2": ["PLP + RFM (full)", "PLP + RFM drift less than PLP alone (long clip PSNR)", "PSNR drift", "reproduced", "inconclusive at this scale"],
}


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_notebook_executes_headless_on_runs(notebook, runs_root, monkeypatch):
    sweep = notebook.stem
    monkeypatch.setenv(lb.RUNS_ENV, lb.runs_folders([runs_root / folder for folder in SWEEPS.get(sweep, [sweep])]))
    nb = nbformat.read(notebook, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()  # raises on a failing cell
    text = _outputs(nb) + "\n".join(output.get("data", {}).keys().__repr__() for cell in nb.cells for output in cell.get("outputs", []))
    for expected in EXPECTED[sweep]:
        assert expected in text, (sweep, expected)


def test_export_writes_a_self_contained_html_report(runs_root, tmp_path):
    out = lb.main([str(ROOT / "notebooks" / "leaderboard.ipynb"), "--runs", str(runs_root / "leaderboard"), "--out", str(tmp_path / "report.html")])
    html = out.read_text()
    assert out == tmp_path / "report.html" and "Leaderboard" in html and "One-to-All" in html
    assert html.count("data:image/png;base64") >= 5  # the drift plot and a grid per method, embedded


def test_runs_come_from_a_wandb_project_the_same_way(monkeypatch):
    import types

    import wandb

    def run(method: str, seed: int, psnr: float):
        return types.SimpleNamespace(url=f"https://wandb.ai/me/animate/runs/{seed}", sweep=types.SimpleNamespace(name="leaderboard"),
                                     config={"seed": seed, "method": {"_target_": f"animate.methods.x.{method}"}, "variant": "none",
                                             "protocol/video": "synthetic v1"},
                                     summary={"test/trained/psnr": psnr, "_runtime": 12.0, "note": "text"})

    class Api:
        def runs(self, project, filters):
            assert project == "me/animate" and filters == {"state": "finished"}
            return [run("FramePrompt", 0, 17.0), run("FramePrompt", 1, 18.0)]

    monkeypatch.setattr(wandb, "Api", Api)
    monkeypatch.setenv(lb.WANDB_ENV, "me/animate")
    runs = lb.load_runs(lb.runs_source("unused"))
    scores = lb.leaderboard(runs, by=["method"], models=["trained"])
    assert list(scores["method"]) == ["FramePrompt"] and scores["mean"].item() == 17.5 and scores["protocol"].item() == "synthetic v1"
