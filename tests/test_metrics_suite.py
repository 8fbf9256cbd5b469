"""MetricSuite: built from config (and every preset of conf/metrics), per-clip values, compute, reset."""

import inspect
import math
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from metrics.suite import METRICS, MetricSuite

CONF = Path(__file__).resolve().parent.parent / "conf"
PRESETS = sorted(p.stem for p in (CONF / "metrics").glob("*.yaml"))


def batch(seed: int = 0, clips: int = 2, frames: int = 3):
    """Generated/target clips, face keypoints and a person mask."""
    generator = torch.Generator().manual_seed(seed)
    target = torch.rand(clips, 3, frames, 32, 32, generator=generator)
    generated = (target + 0.05 * torch.randn(target.shape, generator=generator)).clamp(0, 1)
    keypoints = torch.zeros(clips, frames, 133, 3)
    keypoints[..., 23:91, 0] = torch.linspace(8, 20, 68)
    keypoints[..., 23:91, 1] = torch.linspace(10, 24, 68)
    keypoints[..., 23:91, 2] = 0.9
    person_mask = torch.zeros(clips, frames, 32, 32, dtype=torch.bool)
    person_mask[..., 4:28, 8:24] = True
    return generated, target, keypoints, person_mask


def cheap_config(**overrides):
    """The cheap preset as the config group composes it, with overrides."""
    with initialize_config_dir(config_dir=str(CONF / "metrics"), version_base="1.3"):
        cfg = compose("cheap", overrides=[f"{k}={v}" for k, v in overrides.items()])
    return cfg


def test_the_cheap_suite_runs_without_weight_files_and_reports_per_clip_values():
    suite = MetricSuite.from_config(cheap_config(names="[psnr,ssim,psnr_mask,fpsnr]"))
    generated, target, keypoints, person_mask = batch()
    per_clip = suite.update(generated, target, keypoints=keypoints, person_mask=person_mask)
    assert set(per_clip) == {"psnr", "ssim", "psnr_mask", "fpsnr"}
    assert all(values.shape == (2,) for values in per_clip.values())
    results = suite.compute()
    assert results["psnr"] == pytest.approx(per_clip["psnr"].mean().item())
    assert results["fpsnr_skipped_frames"] == 0 and "psnr_skipped_frames" not in results
    assert all(isinstance(value, float) for value in results.values())
    assert suite.needs == {"keypoints": ["fpsnr"], "person_mask": ["psnr_mask"]}


def test_a_metric_without_its_annotation_names_what_it_needs():
    suite = MetricSuite.from_config(cheap_config(names="[psnr,silhouette_iou]"))
    generated, target, _, person_mask = batch()
    assert suite.needs == {"person_mask": ["silhouette_iou"], "plate": ["silhouette_iou"]}
    with pytest.raises(ValueError, match="silhouette_iou needs plate"):
        suite.update(generated, target, person_mask=person_mask)
    suite.update(generated, target, person_mask=person_mask, skip_unannotated=True)  # a validation loop on real data
    results = suite.compute()
    assert results["silhouette_iou_skipped_clips"] == 2 and math.isnan(results["silhouette_iou"]) and results["psnr"] > 0


def test_reset_starts_over():
    suite = MetricSuite.from_config({"names": ["psnr"]})
    generated, target, _, _ = batch()
    suite.update(generated, target)
    first = suite.compute()["psnr"]
    suite.reset()
    suite.update(generated[:1], target[:1])
    assert suite.compute()["psnr"] != first


def test_options_reach_the_metric():
    suite = MetricSuite.from_config(cheap_config(**{"ssim.mode": "disco", "frame_chunk": 2}))
    assert suite.metrics["ssim"].mode == "disco"
    assert suite.metrics["psnr"].frame_chunk == 2


def test_unknown_names_and_options_are_refused_with_the_choices():
    with pytest.raises(ValueError, match="unknown metric 'fvd2'.*psnr"):
        MetricSuite.from_config({"names": ["fvd2"]})
    with pytest.raises(ValueError, match="ssim.*window"):
        MetricSuite.from_config({"names": ["ssim"], "ssim": {"window": 7}})


def test_a_missing_input_is_named():
    suite = MetricSuite.from_config({"names": ["fpsnr"]})
    generated, target, _, _ = batch()
    with pytest.raises(ValueError, match="keypoints"):
        suite.update(generated, target)


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_names_known_metrics_with_accepted_options(preset):
    with initialize_config_dir(config_dir=str(CONF / "metrics"), version_base="1.3"):
        cfg = OmegaConf.to_container(compose(preset), resolve=True)
    assert cfg["names"] and set(cfg["names"]) <= set(METRICS)
    for name in METRICS:
        accepted = inspect.signature(METRICS[name].__init__).parameters
        assert set(cfg.get(name) or {}) <= set(accepted), f"{preset}: {name} options"


def test_a_parent_module_gets_no_parameters_from_the_suite():
    parent = torch.nn.Module()
    parent.metrics = MetricSuite.from_config({"names": ["psnr", "ssim", "fpsnr"]})
    assert list(parent.parameters()) == []
    assert parent.state_dict() == {}  # metric states are not persistent: nothing enters a checkpoint


def test_drift_is_the_last_quarter_of_the_windows_minus_the_first():
    from metrics.drift import drift_of

    rows = [{"psnr": 20.0 - 0.5 * i, "ssim": 0.5} for i in range(8)]  # quarters: windows 0-1 (19.75) and 6-7 (16.75)
    assert drift_of(rows, ["psnr", "ssim", "fvd"]) == {"psnr": -3.0, "ssim": 0.0}  # a metric absent from the rows is left out
    assert drift_of(rows[:3], ["psnr"]) == {"psnr": -1.0}  # too few windows for a quarter: the first and the last one
    assert drift_of(rows[:1], ["psnr"]) == {}
    assert drift_of([{"window": i, "start_s": 2.0 * i, "clips": 1, "psnr": 20.0 - i} for i in range(4)]) == {"psnr": -3.0}  # every metric column
    with pytest.raises(ValueError, match="must not overlap"):
        drift_of(rows, ["psnr"], fraction=0.6)
