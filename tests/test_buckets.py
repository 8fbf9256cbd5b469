"""Bucket choice, crop/resize, keypoint transform, frame fallback, ratio mix and the batcher."""

import numpy as np
import pytest
import torch

from data.buckets import (
    BucketBatcher,
    BucketSampler,
    CropBox,
    GroupedImageDraw,
    ImageGroups,
    RatioMix,
    aspect_sizes,
    center_crop_box,
    choose_frame_count,
    closest_size,
    crop_resize_frames,
    crop_resize_masks,
    transform_boxes,
    transform_keypoints,
    window_indices,
)


def test_aspect_sizes_are_token_multiples_within_area():
    sizes = aspect_sizes(512)
    assert (384, 672) in sizes and (672, 384) in sizes and (512, 512) in sizes
    for height, width in sizes:
        assert height % 16 == 0 and width % 16 == 0
        assert height * width <= 512 * 512
        assert height * width > 0.85 * 512 * 512


def test_one_to_all_example_720x1300_in_512_bucket():
    size = closest_size(720, 1300, aspect_sizes(512))
    assert size == (384, 672)
    box = center_crop_box(720, 1300, size)
    assert box == CropBox(top=0, left=20, height=720, width=1260)
    frames = np.random.default_rng(0).integers(0, 256, (2, 720, 1300, 3), dtype=np.uint8)
    out = crop_resize_frames(frames, box, size)
    assert out.shape == (2, 3, 384, 672) and out.dtype == torch.uint8


def test_sampler_draws_resolutions_by_probability():
    sampler = BucketSampler({128: 0.7, 96: 0.3}, frame_counts=[9, 17])
    rng = np.random.default_rng(0)
    sizes = [sampler.plan(200, 200, 40, rng).size for _ in range(2000)]
    share_128 = sum(size == (128, 128) for size in sizes) / len(sizes)
    assert abs(share_128 - 0.7) < 0.04
    assert set(sizes) == {(128, 128), (96, 96)}


def test_sampler_rejects_sizes_that_are_not_token_multiples():
    with pytest.raises(ValueError, match="multiple of 16"):
        BucketSampler({64: 1.0}, aspect_ratios={64: [[64, 72]]})


def test_crop_box_cuts_rows_of_tall_frames():
    assert center_crop_box(400, 100, (64, 64)) == CropBox(150, 0, 100, 100)


def _blob_frame(height, width, cx, cy, radius=6):
    """One uint8 frame (1, H, W, 3) with a bright disc centred at (cx, cy)."""
    ys, xs = np.mgrid[0:height, 0:width]
    disc = ((xs - cx) ** 2 + (ys - cy) ** 2 <= radius**2).astype(np.uint8) * 255
    return np.repeat(disc[None, :, :, None], 3, axis=-1)


def _centroid(image):
    """Intensity centroid (x, y) of a (H, W) array."""
    ys, xs = np.mgrid[0 : image.shape[0], 0 : image.shape[1]]
    total = image.sum()
    return (xs * image).sum() / total, (ys * image).sum() / total


@pytest.mark.parametrize("point", [(61.0, 37.0), (150.0, 90.0), (225.0, 20.0)])
def test_keypoints_follow_the_crop_and_resize(point):
    height, width, size = 120, 260, (64, 112)
    box = center_crop_box(height, width, size)
    frame = _blob_frame(height, width, *point)
    out = crop_resize_frames(frame, box, size)[0, 0].double().numpy()  # (h, w)
    keypoints = np.zeros((1, 133, 3), np.float32)
    keypoints[0, 0] = [point[0], point[1], 1.0]
    moved = transform_keypoints(keypoints, box, size)
    cx, cy = _centroid(out)
    assert moved[0, 0, 0] == pytest.approx(cx, abs=0.05)
    assert moved[0, 0, 1] == pytest.approx(cy, abs=0.05)
    assert moved[0, 0, 2] == 1.0


def test_keypoints_outside_the_crop_lose_confidence():
    box = center_crop_box(100, 300, (64, 64))  # keeps columns 100..199
    keypoints = np.array([[[50.0, 50.0, 0.9], [150.0, 50.0, 0.9]]], np.float32)
    moved = transform_keypoints(keypoints, box, (64, 64))
    assert moved[0, 0, 2] == 0.0 and moved[0, 1, 2] == pytest.approx(0.9)
    assert moved[0, 1, 0] == pytest.approx((150 - 100 + 0.5) * 0.64 - 0.5)


def test_masks_and_boxes_follow_the_crop():
    box = CropBox(top=10, left=20, height=40, width=80)
    masks = np.zeros((3, 60, 120), bool)
    masks[:, 10:30, 20:60] = True
    out = crop_resize_masks(masks, box, (20, 40))
    assert out.shape == (3, 20, 40) and out[:, :10, :20].all() and not out[:, 10:, :].any()
    boxes = transform_boxes([[2, 20, 10, 60, 30], [1, 0, 0, 5, 5], [4, 20, 10, 60, 30]], box, (20, 40), [2, 4])
    assert boxes == [[0, 0.0, 0.0, 20.0, 10.0], [1, 0.0, 0.0, 20.0, 10.0]]


def test_frame_count_falls_back_to_largest_that_fits():
    rng = np.random.default_rng(0)
    always_17 = np.array([0.0, 1.0])
    assert choose_frame_count(40, [9, 17], always_17, rng) == 17
    assert choose_frame_count(12, [9, 17], always_17, rng) == 9
    assert choose_frame_count(20, [9, 17], always_17, rng, stride=2) == 9
    assert choose_frame_count(6, [9, 17], always_17, rng) == 5  # shorter than every bucket: largest 1 + 4k


def test_windows_random_in_training_and_from_zero_in_evaluation():
    rng = np.random.default_rng(0)
    starts = {int(window_indices(30, 9, 2, rng)[0]) for _ in range(200)}
    assert starts == set(range(0, 30 - 17 + 1))
    assert window_indices(30, 9, 2).tolist() == list(range(0, 17, 2))
    sampler = BucketSampler({128: 0.5, 96: 0.5}, frame_counts=[9, 17])
    plan = sampler.plan_fixed(256, 256, 12)
    assert plan.key == (128, 128, 9) and plan.frame_indices[0] == 0
    image = sampler.plan(256, 256, 1, rng)
    assert image.key[2] == 1


def test_ratio_mix_proportions():
    videos = ({"kind": "video"} for _ in range(100_000))
    images = ({"kind": "image"} for _ in range(100_000))
    drawn = [sample["kind"] for _, sample in zip(range(7000), RatioMix([videos, images], [6, 1], seed=3))]
    assert abs(drawn.count("image") / len(drawn) - 1 / 7) < 0.015


def test_ratio_mix_is_reproducible_by_seed():
    def kinds(seed):
        sources = [[("v", i) for i in range(50)], [("i", i) for i in range(50)]]
        return list(RatioMix(sources, [6, 1], seed=seed))

    assert kinds(1) == kinds(1)
    assert kinds(1) != kinds(2)


def test_image_groups_are_k_over_6_groups_of_one_aspect_bucket():
    groups = ImageGroups.partition({(64, 48): 60, (48, 64): 35, (64, 64): 5}, num_videos=120, ratio=6)
    assert groups.num_groups == 120 // 6  # group size 100 // 20 = 5: 12 + 7 + 1 groups
    assert groups.groups == {(64, 48): 12, (48, 64): 7, (64, 64): 1}
    assert sum(groups.counts[size] * groups.image_probability(size) for size in groups.counts) == pytest.approx(1.0)
    assert max(groups.acceptance(size) for size in groups.counts) == 1.0


def test_grouped_draw_picks_a_group_then_an_image():
    # 90 wide images make 10 groups, 5 tall ones (fewer than a group of 9) one group of their own:
    # a draw is a tall image 1 time in 11, where uniform draws over images would give 5 in 95.
    groups = ImageGroups.partition({(32, 64): 90, (64, 32): 5}, num_videos=60, ratio=6)
    assert groups.num_groups == 11
    images = [{"size": (32, 64)}] * 90 + [{"size": (64, 32)}] * 5 + [{"size": None}]
    rng = np.random.default_rng(0)
    stream = (images[i] for i in rng.integers(len(images), size=60_000))
    draw = GroupedImageDraw(groups, lambda sample: sample["size"], seed=1)
    kept = [sample["size"] for sample in draw(stream)]
    grouped = [size for size in kept if size is not None]
    assert abs(grouped.count((64, 32)) / len(grouped) - 1 / 11) < 0.006
    assert draw.ungrouped == kept.count(None) > 0  # unknown sizes pass through, counted
    assert draw.rejected > 0 and draw.kept == len(kept)


def test_equal_groups_keep_every_image():
    groups = ImageGroups.partition({(32, 64): 40, (64, 32): 20}, num_videos=60, ratio=6)
    draw = GroupedImageDraw(groups, lambda sample: sample)
    assert list(draw([(32, 64)] * 7 + [(64, 32)] * 3)) == [(32, 64)] * 7 + [(64, 32)] * 3


def _sample(frames, height, width, name):
    return {"video": torch.zeros(3, frames, height, width, dtype=torch.uint8), "key": name}


def test_batcher_groups_by_bucket_key():
    stream = [_sample(9, 32, 32, f"a{i}") for i in range(3)] + [_sample(1, 32, 48, f"b{i}") for i in range(2)]
    stream.insert(1, _sample(9, 32, 48, "c0"))
    batches = list(BucketBatcher(batch_size=2, partial=True)(iter(stream)))
    shapes_and_keys = [(tuple(batch["video"].shape), batch["key"]) for batch in batches]
    assert shapes_and_keys == [
        ((2, 3, 9, 32, 32), ["a0", "a1"]),
        ((2, 3, 1, 32, 48), ["b0", "b1"]),
        ((1, 3, 9, 32, 48), ["c0"]),
        ((1, 3, 9, 32, 32), ["a2"]),
    ]
    assert len(list(BucketBatcher(batch_size=2)(iter(stream)))) == 2  # no partial flush: leftovers dropped


def test_batcher_bounds_pending_samples():
    read = 0

    def stream():
        nonlocal read
        for i in range(100):  # 5 buckets in rotation, batch of 8: no bucket fills before the bound
            read += 1
            yield _sample(1, 16, 16 * (1 + i % 5), str(i))

    emitted = 0
    for batch in BucketBatcher(batch_size=8, max_pending=12)(stream()):
        emitted += len(batch["key"])
        assert len(batch["key"]) < 8
        assert read - emitted <= 12
    assert read == 100 and 100 - emitted <= 12
