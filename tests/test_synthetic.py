"""The puppet benchmark: determinism, exact keypoints on the person mask, motion, held-out colour cells, styles, framing, splits, CLI."""

import subprocess
import sys
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import pytest

from benchmarks.person_tokens import main as person_tokens
from common.cli import compose_config
from common.pose.layout import hand_boxes
from data.shards import BadSampleCounter, iter_shard_samples, read_manifest
from data.synthetic import (
    HELD_OUT_CELLS,
    HUE_BANDS,
    SUBSET_PREFIXES,
    SyntheticConfig,
    ensure_dataset,
    frame_size,
    generate_dataset,
    hue_band,
    make_clip,
    make_identity,
    make_image_pair,
    mean_token_stats,
    split_token_stats,
    token_stats,
)
from data.synthetic.cli import main

ROOT = Path(__file__).resolve().parent.parent

SMALL = SyntheticConfig(frames=9)
TINY = SyntheticConfig(seed=3, train_clips=3, val_clips=2, test_clips=2, train_pairs=1, val_pairs=1, test_pairs=1, frames=5,
                       size=64, text_fraction=0.5, long_clips=1, long_seconds=0.5, samples_per_shard=2)
NO_PAIRS = dict(train_pairs=0, val_pairs=0, test_pairs=0)
CONFIDENCE_LEVELS = {0.0, 0.3, 0.5, 0.6, 1.0}


@pytest.mark.parametrize("style", ["flat", "textured"])
def test_same_seed_gives_identical_arrays_and_another_seed_differs(style):
    config = replace(SMALL, style=style)
    first, second = make_clip(config, "train", 2), make_clip(config, "train", 2)
    np.testing.assert_array_equal(first.frames, second.frames)
    np.testing.assert_array_equal(first.keypoints, second.keypoints)
    np.testing.assert_array_equal(first.person_mask, second.person_mask)
    np.testing.assert_array_equal(first.plate, second.plate)
    assert first.meta == second.meta and first.key == second.key
    other = make_clip(replace(config, seed=1), "train", 2)
    assert other.meta["identity"] != first.meta["identity"] and not np.array_equal(other.keypoints, first.keypoints)


def test_visible_keypoints_land_on_the_person_mask_and_absent_ones_are_outside():
    for index in range(8):
        sample = make_clip(SMALL, "train", index)
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
    keypoints = np.concatenate([make_clip(SMALL, "train", index).keypoints for index in range(8)])
    _, valid = hand_boxes(keypoints)
    assert 0.1 < valid.mean() < 0.95


def test_motion_makes_the_reference_frame_a_poor_predictor_but_stays_smooth():
    config = SyntheticConfig()
    psnrs, steps = [], []
    for index in range(4):
        sample = make_clip(config, "train", index)
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
    shapes = {make_clip(replace(SMALL, frames=1), "train", index).frames.shape[1:3] for index in range(10)}
    assert len(shapes) >= 2 and all(h % 16 == 0 and w % 16 == 0 for h, w in shapes)


def test_text_overlays_are_drawn_where_their_boxes_say():
    with_text = make_clip(replace(SMALL, text_fraction=1.0), "train", 5)
    without = make_clip(replace(SMALL, text_fraction=0.0), "train", 5)
    assert without.meta["text_boxes"] == [] and len(with_text.meta["text_boxes"]) == SMALL.frames
    changed = np.any(with_text.frames != without.frames, axis=-1)  # (T, H, W)
    for t, x0, y0, x1, y1 in with_text.meta["text_boxes"]:
        assert 0 <= x0 < x1 <= with_text.meta["width"] and 0 <= y0 < y1 <= with_text.meta["height"]
        inside = np.zeros_like(changed[t])
        inside[y0:y1, x0:x1] = True
        assert changed[t][inside].any() and not changed[t][~inside].any()


def test_the_plate_is_the_rendered_scene_wherever_the_person_is_not():
    clip = make_clip(replace(SMALL, text_fraction=1.0), "train", 5)
    assert clip.plate.shape == clip.frames.shape[1:] and clip.plate.dtype == np.uint8
    outside = ~clip.person_mask  # (T, H, W)
    np.testing.assert_array_equal(clip.frames[outside], np.broadcast_to(clip.plate, clip.frames.shape)[outside])
    assert (clip.frames[clip.person_mask] != np.broadcast_to(clip.plate, clip.frames.shape)[clip.person_mask]).any()
    first, second = make_image_pair(SMALL, "val", 5)
    np.testing.assert_array_equal(first.plate, second.plate)


def test_image_pairs_share_identity_and_background_in_different_poses():
    first, second = make_image_pair(SMALL, "val", 5)
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


def test_generated_dataset_has_an_identity_per_sample_and_decodes(tmp_path):
    manifest = generate_dataset(tmp_path, TINY, progress=False)
    assert read_manifest(tmp_path) == manifest and manifest["config"]["seed"] == 3
    assert manifest["identity_split"]["held_out"] == [list(cell) for cell in HELD_OUT_CELLS] and manifest["identity_split"]["description"]
    identities = {split: set(info["identities"]) for split, info in manifest["splits"].items()}
    assert [len(identities[s]) for s in ("train", "val", "test")] == [3 + 1 + 1, 2 + 1 + 1, 2 + 1 + 1]  # clips, pairs, long clips
    assert not (identities["train"] & identities["val"] or identities["train"] & identities["test"] or identities["val"] & identities["test"])
    keys = []
    for split, info in manifest["splits"].items():
        for subset, prefix in SUBSET_PREFIXES.items():
            samples = _decoded(tmp_path, manifest, split, subset)
            assert len(samples) == info[subset]["samples"]
            assert all(path.startswith(f"{split}/{prefix}-") for path in info[subset]["shards"])
            assert all(s.meta["split"] == split and s.meta["identity"] in identities[split] and s.key.startswith(s.meta["identity"]) for s in samples)
            assert all(s.person_mask is not None and s.keypoints.shape[0] == s.meta["num_frames"] for s in samples)
            assert all(s.plate is not None and s.plate.shape == s.frames.shape[1:] for s in samples)
            keys += [s.key for s in samples]
        videos, images = _decoded(tmp_path, manifest, split, "video"), _decoded(tmp_path, manifest, split, "images")
        assert len({s.meta["identity"] for s in videos}) == len(videos) == TINY.clips(split) and len(images) == 2 * TINY.pairs(split)
        long_clip = _decoded(tmp_path, manifest, split, "long")[0]
        assert long_clip.meta["num_frames"] == round(TINY.long_seconds * TINY.fps) == len(long_clip.frames)
        assert split_token_stats(tmp_path, split, "images") == mean_token_stats(images)
    assert len(keys) == len(set(keys))
    assert person_tokens([str(tmp_path), "--splits", "test"])["test"]["video"] == mean_token_stats(_decoded(tmp_path, manifest, "test", "video"))


def test_no_training_identity_wears_a_held_out_cell_and_every_val_and_test_one_does():
    config = SyntheticConfig()

    def cells(split, subset, count):
        """(top band, bottom band) of the first ``count`` identities of a split's subset, checking the shades stay in their band."""
        found = []
        for index in range(count):
            idt = make_identity(config, split, subset, index)
            assert hue_band(idt.shirt["color2"]) == hue_band(idt.shirt["color"]) and hue_band(idt.pants["color2"]) == hue_band(idt.pants["color"])
            found.append((hue_band(idt.shirt["color"]), hue_band(idt.pants["color"])))
        return found

    train = cells("train", "video", 300) + cells("train", "images", 50) + cells("train", "long", 1)
    held_out = [cell for split in ("val", "test") for subset, count in (("video", 32), ("images", 16), ("long", 1)) for cell in cells(split, subset, count)]
    assert not set(train) & set(HELD_OUT_CELLS) and set(held_out) <= set(HELD_OUT_CELLS)
    assert {top for top, _ in train} == {bottom for _, bottom in train} == set(range(HUE_BANDS))  # each band seen in training, per part
    assert len(set(held_out)) == len(HELD_OUT_CELLS)


def test_the_styles_share_people_and_motion_and_differ_in_looks():
    flat, textured = make_clip(SMALL, "train", 3), make_clip(replace(SMALL, style="textured"), "train", 3)
    np.testing.assert_array_equal(flat.keypoints, textured.keypoints)
    np.testing.assert_array_equal(flat.person_mask, textured.person_mask)
    assert flat.meta["identity"] == textured.meta["identity"] and not np.array_equal(flat.frames, textured.frames)
    with pytest.raises(ValueError, match="style must be one of flat, textured"):
        SyntheticConfig(style="shiny")


def _edge_share(image: np.ndarray) -> float:
    """Share of neighbouring pixel pairs (both directions) that differ by more than 12 levels in some channel."""
    image = image.astype(int)
    return float(np.mean([(np.abs(np.diff(image, axis=axis)).max(axis=-1) > 12).mean() for axis in (0, 1)]))


def test_flat_backgrounds_and_people_are_low_frequency_and_textured_ones_are_not():
    flat = [make_clip(replace(SMALL, frames=1), "train", index) for index in range(12)]
    textured = [make_clip(replace(SMALL, frames=1, style="textured"), "train", index) for index in range(12)]
    assert max(_edge_share(s.plate) for s in flat) < 0.01  # a floor line at most: no tiles, stripes or noise
    assert np.mean([_edge_share(s.plate) for s in textured]) > 0.03
    assert np.mean([_edge_share(s.frames[0]) for s in flat]) < 0.5 * np.mean([_edge_share(s.frames[0]) for s in textured])


def test_text_overlays_follow_the_style_unless_text_fraction_is_set():
    assert SyntheticConfig().text_share() == 0.0 and SyntheticConfig(style="textured").text_share() == 0.25
    assert SyntheticConfig(text_fraction=0.5).text_share() == 0.5 and SyntheticConfig(style="textured", text_fraction=0.0).text_share() == 0.0
    assert all(make_clip(replace(SMALL, frames=1), "train", index).meta["text_boxes"] == [] for index in range(8))


def test_token_stats_count_tokens_a_quarter_covered_and_their_rows():
    mask = np.zeros((2, 64, 48), dtype=bool)  # 4 x 3 tokens of 16 px
    mask[0, 0:16, 0:4] = True  # exactly a quarter of token (0, 0): counted
    mask[0, 16:28, 0:4] = True  # 48 of the 256 pixels of token (1, 0): not counted
    mask[0, 32:36, 16:32] = True  # a quarter of token (2, 1): counted, so the person spans token rows 0 to 2
    coverage, height = token_stats(mask)
    np.testing.assert_allclose(coverage, [2 / 12, 0.0])
    np.testing.assert_array_equal(height, [3, 0])


def test_the_default_person_is_big_in_tokens():
    stats = mean_token_stats(make_clip(SyntheticConfig(), "train", index) for index in range(24))
    assert stats["token_coverage"] >= 0.2 and stats["token_height"] >= 6.0 and stats["frames"] == 24 * SyntheticConfig().frames


def test_ensure_dataset_reuses_a_matching_directory_and_regenerates_otherwise(tmp_path):
    config = replace(TINY, long_clips=0, **NO_PAIRS)
    ensure_dataset(tmp_path, config, progress=False)
    shard = tmp_path / "train" / "shard-000000.tar"
    stamp = shard.stat().st_mtime_ns
    ensure_dataset(tmp_path, config, progress=False)
    assert shard.stat().st_mtime_ns == stamp
    changed = ensure_dataset(tmp_path, replace(config, samples_per_shard=8), progress=False)
    assert changed["config"]["samples_per_shard"] == 8 and shard.stat().st_mtime_ns != stamp
    assert sorted(p.name for p in (tmp_path / "train").iterdir()) == ["shard-000000.tar"]  # old shards removed


def test_worker_processes_do_not_change_the_data(tmp_path):
    config = replace(TINY, long_clips=0, val_clips=0, test_clips=0, **NO_PAIRS)
    single = generate_dataset(tmp_path / "one", config, workers=1, progress=False)
    double = generate_dataset(tmp_path / "two", config, workers=2, progress=False)
    assert single["splits"] == double["splits"]
    for left, right in zip(_decoded(tmp_path / "one", single, "train", "video"), _decoded(tmp_path / "two", double, "train", "video")):
        assert left.key == right.key and left.meta == right.meta
        np.testing.assert_array_equal(left.keypoints, right.keypoints)


def test_cli_runs_on_a_tiny_config(tmp_path):
    command = [sys.executable, "-m", "data.synthetic", f"out={tmp_path}", "train_clips=2", "val_clips=1", "test_clips=1", "train_pairs=1",
               "val_pairs=1", "test_pairs=1", "frames=5", "size=32", "style=textured", "text_fraction=1", "long_clips=0"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "train: 3 identities; video 2 in 1 shards" in result.stdout
    manifest = read_manifest(tmp_path)
    assert manifest["config"]["size"] == 32 and manifest["config"]["style"] == "textured"
    assert (tmp_path / manifest["splits"]["val"]["images"]["shards"][0]).is_file()
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


def test_training_runs_switch_to_the_textured_world_by_one_key():
    data = compose_config("fit", ["data.synthetic.style=textured"]).data
    assert SyntheticConfig(**data.synthetic) == SyntheticConfig(style="textured")


def test_config_rejects_sizes_that_are_not_multiples_of_16():
    with pytest.raises(ValueError, match="multiple of 16"):
        SyntheticConfig(size=100)
