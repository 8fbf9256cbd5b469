"""The puppet benchmark: determinism, exact keypoints on the person mask, motion, splits, CLI."""

import subprocess
import sys
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import pytest

from common.cli import compose_config
from common.pose.layout import hand_boxes
from data.shards import BadSampleCounter, iter_shard_samples, read_manifest
from data.synthetic import (
    SUBSET_PREFIXES,
    SyntheticConfig,
    ensure_dataset,
    frame_size,
    generate_dataset,
    make_clip,
    make_image_pair,
)
from data.synthetic.cli import main

ROOT = Path(__file__).resolve().parent.parent

SMALL = SyntheticConfig(frames=9)
TINY = SyntheticConfig(seed=3, train_identities=3, val_identities=2, test_identities=2, clips_per_identity=1, frames=5,
                       size=64, image_pairs_per_identity=1, text_fraction=0.5, long_clips=1, long_seconds=0.5, samples_per_shard=2)
CONFIDENCE_LEVELS = {0.0, 0.3, 0.5, 0.6, 1.0}


def test_same_seed_gives_identical_arrays_and_another_seed_differs():
    first, second = make_clip(SMALL, "train", 2, 1), make_clip(SMALL, "train", 2, 1)
    np.testing.assert_array_equal(first.frames, second.frames)
    np.testing.assert_array_equal(first.keypoints, second.keypoints)
    np.testing.assert_array_equal(first.person_mask, second.person_mask)
    assert first.meta == second.meta and first.key == second.key
    other = make_clip(replace(SMALL, seed=1), "train", 2, 1)
    assert other.meta["identity"] != first.meta["identity"] and not np.array_equal(other.keypoints, first.keypoints)


def test_visible_keypoints_land_on_the_person_mask_and_absent_ones_are_outside():
    for identity in range(8):
        sample = make_clip(SMALL, "train", identity, 0)
        count, height, width = sample.person_mask.shape
        assert sample.frames.shape == (count, height, width, 3) and sample.keypoints.shape == (count, 133, 3)
        x, y, conf = np.moveaxis(sample.keypoints, -1, 0)
        outside = (x < 0) | (x >= width) | (y < 0) | (y >= height)
        np.testing.assert_array_equal(conf == 0, outside)
        rows, cols = np.floor(y).astype(int).clip(0, height - 1), np.floor(x).astype(int).clip(0, width - 1)
        on_mask = sample.person_mask[np.arange(count)[:, None], rows, cols]
        assert on_mask[~outside].all()
        assert np.isclose(conf[..., None], sorted(CONFIDENCE_LEVELS)).any(axis=-1).all()
        assert 0.03 < sample.person_mask.mean() < 0.6


def test_hand_validity_rule_is_exercised():
    keypoints = np.concatenate([make_clip(SMALL, "train", identity, 0).keypoints for identity in range(8)])
    _, valid = hand_boxes(keypoints)
    assert 0.1 < valid.mean() < 0.95


def test_motion_makes_the_reference_frame_a_poor_predictor_but_stays_smooth():
    config = SyntheticConfig()
    psnrs, steps = [], []
    for identity in range(4):
        sample = make_clip(config, "train", identity, 0)
        frames, mask = sample.frames.astype(np.float64), sample.person_mask
        for t in range(8, config.frames):
            region = mask[0] | mask[t]
            psnrs.append(10 * np.log10(255.0**2 / ((frames[t] - frames[0]) ** 2)[region].mean()))
        kp = sample.keypoints
        both = (kp[1:, :, 2] > 0) & (kp[:-1, :, 2] > 0)
        steps.append(np.linalg.norm(kp[1:, :, :2] - kp[:-1, :, :2], axis=-1)[both])
    assert np.mean(psnrs) < 18.0  # copying frame 0 is far off inside the person
    assert np.percentile(np.concatenate(steps), 99) < 0.12 * config.size  # pixels per frame


def test_aspect_ratios_have_multiple_of_16_sizes():
    assert frame_size("square", 128) == (128, 128)
    assert frame_size("portrait", 128) == (176, 128) and frame_size("landscape", 128) == (128, 176)
    shapes = {make_clip(replace(SMALL, frames=1), "train", identity, 0).frames.shape[1:3] for identity in range(10)}
    assert len(shapes) >= 2 and all(h % 16 == 0 and w % 16 == 0 for h, w in shapes)


def test_text_overlays_are_drawn_where_their_boxes_say():
    with_text = make_clip(replace(SMALL, text_fraction=1.0), "train", 5, 0)
    without = make_clip(replace(SMALL, text_fraction=0.0), "train", 5, 0)
    assert without.meta["text_boxes"] == [] and len(with_text.meta["text_boxes"]) == SMALL.frames
    changed = np.any(with_text.frames != without.frames, axis=-1)  # (T, H, W)
    for t, x0, y0, x1, y1 in with_text.meta["text_boxes"]:
        assert 0 <= x0 < x1 <= with_text.meta["width"] and 0 <= y0 < y1 <= with_text.meta["height"]
        inside = np.zeros_like(changed[t])
        inside[y0:y1, x0:x1] = True
        assert changed[t][inside].any() and not changed[t][~inside].any()


def test_the_plate_is_the_rendered_scene_wherever_the_person_is_not():
    clip = make_clip(replace(SMALL, text_fraction=1.0), "train", 5, 0)
    assert clip.plate.shape == clip.frames.shape[1:] and clip.plate.dtype == np.uint8
    outside = ~clip.person_mask  # (T, H, W)
    np.testing.assert_array_equal(clip.frames[outside], np.broadcast_to(clip.plate, clip.frames.shape)[outside])
    assert (clip.frames[clip.person_mask] != np.broadcast_to(clip.plate, clip.frames.shape)[clip.person_mask]).any()
    first, second = make_image_pair(SMALL, "val", 50, 0)
    np.testing.assert_array_equal(first.plate, second.plate)


def test_image_pairs_share_identity_and_background_in_different_poses():
    first, second = make_image_pair(SMALL, "val", 50, 0)
    assert first.meta["pair"] == second.key and second.meta["pair"] == first.key
    assert first.meta["identity"] == second.meta["identity"] and first.meta["kind"] == "image" == second.meta["kind"]
    assert first.frames.shape[0] == 1 and first.frames.shape == second.frames.shape
    background = ~(first.person_mask[0] | second.person_mask[0])
    np.testing.assert_array_equal(first.frames[0][background], second.frames[0][background])
    assert np.abs(first.keypoints[0, :17, :2] - second.keypoints[0, :17, :2]).max() > 5


def _decoded(out, manifest, split, subset):
    """Decoded samples of one subset of a split, asserting none is bad."""
    counter = BadSampleCounter()
    samples = list(iter_shard_samples([out / path for path in manifest["splits"][split][subset]["shards"]], counter))
    assert counter.total == 0, counter.summary()
    return samples


def test_generated_dataset_has_identity_disjoint_splits_and_decodes(tmp_path):
    manifest = generate_dataset(tmp_path, TINY, progress=False)
    assert read_manifest(tmp_path) == manifest and manifest["config"]["seed"] == 3
    identities = {split: set(info["identities"]) for split, info in manifest["splits"].items()}
    assert [len(identities[s]) for s in ("train", "val", "test")] == [3, 2, 2]
    assert not (identities["train"] & identities["val"] or identities["train"] & identities["test"] or identities["val"] & identities["test"])
    for split, info in manifest["splits"].items():
        for subset, prefix in SUBSET_PREFIXES.items():
            samples = _decoded(tmp_path, manifest, split, subset)
            assert len(samples) == info[subset]["samples"]
            assert all(path.startswith(f"{split}/{prefix}-") for path in info[subset]["shards"])
            assert all(s.meta["split"] == split and s.meta["identity"] in identities[split] for s in samples)
            assert all(s.person_mask is not None and s.keypoints.shape[0] == s.meta["num_frames"] for s in samples)
            assert all(s.plate is not None and s.plate.shape == s.frames.shape[1:] for s in samples)
        assert info["video"]["samples"] == len(identities[split]) and info["images"]["samples"] == 2 * len(identities[split])
        long_clip = _decoded(tmp_path, manifest, split, "long")[0]
        assert long_clip.meta["num_frames"] == round(TINY.long_seconds * TINY.fps) == len(long_clip.frames)


def test_ensure_dataset_reuses_a_matching_directory_and_regenerates_otherwise(tmp_path):
    config = replace(TINY, long_clips=0, image_pairs_per_identity=0)
    ensure_dataset(tmp_path, config, progress=False)
    shard = tmp_path / "train" / "shard-000000.tar"
    stamp = shard.stat().st_mtime_ns
    ensure_dataset(tmp_path, config, progress=False)
    assert shard.stat().st_mtime_ns == stamp
    changed = ensure_dataset(tmp_path, replace(config, samples_per_shard=8), progress=False)
    assert changed["config"]["samples_per_shard"] == 8 and shard.stat().st_mtime_ns != stamp
    assert sorted(p.name for p in (tmp_path / "train").iterdir()) == ["shard-000000.tar"]  # old shards removed


def test_worker_processes_do_not_change_the_data(tmp_path):
    config = replace(TINY, long_clips=0, val_identities=0, test_identities=0)
    single = generate_dataset(tmp_path / "one", config, workers=1, progress=False)
    double = generate_dataset(tmp_path / "two", config, workers=2, progress=False)
    assert single["splits"] == double["splits"]
    for left, right in zip(_decoded(tmp_path / "one", single, "train", "video"), _decoded(tmp_path / "two", double, "train", "video")):
        assert left.key == right.key and left.meta == right.meta
        np.testing.assert_array_equal(left.keypoints, right.keypoints)


def test_cli_runs_on_a_tiny_config(tmp_path):
    command = [sys.executable, "-m", "data.synthetic", f"out={tmp_path}", "train_identities=2", "val_identities=1",
               "test_identities=1", "clips_per_identity=1", "frames=5", "size=32", "text_fraction=1"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "train: 2 identities; video 2 in 1 shards" in result.stdout
    manifest = read_manifest(tmp_path)
    assert manifest["config"]["size"] == 32 and (tmp_path / manifest["splits"]["val"]["images"]["shards"][0]).is_file()
    assert not (ROOT / "outputs").exists() and not (tmp_path / ".hydra").exists()


@pytest.mark.parametrize("override, message", [("size=100", "multiple of 16"), ("size=abc", "size: Value 'abc'"), ("sise=64", "did you mean size?")])
def test_cli_rejects_bad_settings_in_one_line(tmp_path, override, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([f"out={tmp_path}", override])
    error = capsys.readouterr().err
    assert exit_info.value.code == 2 and error.startswith("error: ") and error.count("\n") == 1 and message in error


def test_cli_config_has_the_generator_defaults():
    cfg = compose_config("synthetic", ["out=unused"])
    assert SyntheticConfig(**{item.name: cfg[item.name] for item in fields(SyntheticConfig)}) == SyntheticConfig()
    assert set(cfg) == {item.name for item in fields(SyntheticConfig)} | {"out", "workers", "force"}


def test_config_rejects_sizes_that_are_not_multiples_of_16():
    with pytest.raises(ValueError, match="multiple of 16"):
        SyntheticConfig(size=100)
