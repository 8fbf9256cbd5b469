"""AnimationDataModule on a tiny synthetic dataset: batch contract, epochs, seeds, ranks, bad shards."""

import io
import json
import os
import shutil
import tarfile
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from data.datamodule import AnimationDataModule

TINY = dict(seed=3, train_clips=6, val_clips=4, test_clips=2, train_pairs=3, val_pairs=2, test_pairs=1, frames=17, size=64,
            samples_per_shard=2, long_clips=0)
BATCH_KEYS = {"video", "pose", "reference", "reference_pose", "keypoints", "reference_keypoints", "loss_weight",
              "person_mask", "has_person_mask", "plate", "has_plate", "key", "cache_key"}


def make_module(root=None, **overrides):
    """A datamodule with tiny buckets (64 / 48 px, 5 / 9 frames)."""
    options = dict(root=root, batch_size=2, num_workers=0, resolutions={64: 0.7, 48: 0.3}, frame_buckets=[5, 9],
                   video_image_ratio=[1, 1], epoch_batches=3, val_samples=4, seed=0)
    options.update(overrides)
    return AnimationDataModule(**options)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """The tiny synthetic dataset, created through prepare_data."""
    root = tmp_path_factory.mktemp("puppets")
    module = make_module(root, synthetic=TINY)
    module.prepare_data()
    assert (root / "manifest.json").is_file()
    return root


def train_batches(module, epochs=1):
    """Batches of ``epochs`` passes over one train dataloader, bad-sample counts moved to the module."""
    loader = module.train_dataloader()
    batches = []
    for _ in range(epochs):
        for batch in loader:
            batches.append(module.on_before_batch_transfer(batch, 0))
    return batches


def test_train_batches_follow_the_contract(dataset):
    batches = train_batches(make_module(dataset, epoch_batches=6))
    assert len(batches) == 6
    assert {batch["video"].shape[2] for batch in batches} >= {1, 5}  # images and clips
    for batch in batches:
        assert set(batch) == BATCH_KEYS
        b, channels, frames, height, width = batch["video"].shape
        assert channels == 3 and frames in (1, 5, 9) and height % 16 == 0 and width % 16 == 0
        assert batch["pose"].shape == batch["video"].shape
        assert batch["reference"].shape == batch["reference_pose"].shape == (b, 3, height, width)
        for name in ("video", "pose", "reference", "reference_pose", "plate"):
            assert batch[name].dtype == torch.float32 and -1 <= batch[name].min() and batch[name].max() <= 1
        assert batch["pose"].max() > 0.9  # something was drawn
        assert batch["keypoints"].shape == (b, frames, 133, 3)
        assert batch["reference_keypoints"].shape == (b, 133, 3)
        assert batch["loss_weight"].shape == (b, 1 + (frames - 1) // 4, height // 16, width // 16)
        assert set(batch["loss_weight"].unique().tolist()) <= {0.0, 1.0, 3.0}
        assert batch["person_mask"].shape == (b, frames, height, width) and batch["person_mask"].dtype == torch.bool
        assert batch["has_person_mask"].all() and batch["person_mask"].any()
        assert batch["has_plate"].all() and batch["plate"].shape == (b, 3, height, width)
        outside = ~batch["person_mask"][:, None]  # the plate is the cropped scene: off the person it is the video (H.264 aside)
        scene = batch["plate"][:, :, None].expand_as(batch["video"])
        assert (batch["video"] - scene).abs()[outside.expand_as(batch["video"])].mean() < 0.03
        assert len(batch["key"]) == len(batch["cache_key"]) == b


def test_cache_key_names_the_samples_content(dataset):
    batch = next(iter(make_module(dataset).val_dataloader()))
    for key, cache_key in zip(batch["key"], batch["cache_key"]):
        name, digest = cache_key.split("|")[0].split("@")
        assert name == key and len(digest) == 12


def test_cache_key_identifies_the_pixels(dataset):
    batches = train_batches(make_module(dataset, epoch_batches=8, frame_buckets=[5], resolutions={64: 1.0}))
    samples = [(key, video, reference) for batch in batches
               for key, video, reference in zip(batch["cache_key"], batch["video"], batch["reference"])]
    assert len({key for key, _, _ in samples}) > 8
    for key, video, reference in samples:
        for other_key, other_video, other_reference in samples:
            same = video.shape == other_video.shape and torch.equal(video, other_video) \
                and torch.equal(reference, other_reference)
            assert (key == other_key) == same


def test_loss_weights_mark_heads(dataset):
    batches = train_batches(make_module(dataset, epoch_batches=4, video_image_ratio=[1]))
    assert any((batch["loss_weight"] == 3.0).any() for batch in batches)


def test_epochs_have_epoch_batches_and_differ(dataset):
    module = make_module(dataset)
    batches = train_batches(module, epochs=2)
    assert len(batches) == 6
    first, second = [sum((batch["cache_key"] for batch in part), []) for part in (batches[:3], batches[3:])]
    assert first != second


def test_same_seed_same_batches_other_seed_other_batches(dataset):
    def keys_and_videos(seed, workers):
        batches = train_batches(make_module(dataset, seed=seed, num_workers=workers))
        assert len(batches) == 3
        return [batch["cache_key"] for batch in batches], [batch["video"] for batch in batches]

    keys, videos = keys_and_videos(0, 0)
    again_keys, again_videos = keys_and_videos(0, 0)
    assert keys == again_keys and all(torch.equal(a, b) for a, b in zip(videos, again_videos))
    assert keys_and_videos(1, 0)[0] != keys
    assert keys_and_videos(0, 2)[0] == keys_and_videos(0, 2)[0]


def test_validation_is_fixed_and_split_disjointly_over_ranks(dataset, monkeypatch):
    module = make_module(dataset, val_samples=4)
    whole = [batch for batch in module.val_dataloader()]
    keys = [key for batch in whole for key in batch["key"]]
    assert len(keys) == 4 and len(set(keys)) == 4 and all(key.startswith("puppet-s3-val-") for key in keys)
    for batch in whole:
        assert batch["video"].shape[2] == 9  # largest frame bucket a 17-frame clip fills
        # evaluation reference: the last frame outside the window, never a frame to be generated
        assert all("|start0|" in key and key.endswith(":16") for key in batch["cache_key"])
        assert max(batch["video"].shape[-2:]) == 64  # first resolution
    assert keys == [key for batch in module.val_dataloader() for key in batch["key"]]
    shares = []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        shares.append({key for batch in module.val_dataloader() for key in batch["key"]})
    assert shares[0] and shares[1] and not shares[0] & shares[1] and shares[0] | shares[1] == set(keys)


def test_reference_first_is_frame_zero_in_evaluation(dataset):
    module = make_module(dataset, val_samples=2, reference="first")
    assert all(key.endswith(":0") for batch in module.val_dataloader() for key in batch["cache_key"])


def test_fixed_windows_keep_one_reference_per_clip_across_epochs(dataset):
    module = make_module(dataset, random_window=False, resolutions={64: 1.0}, frame_buckets=[9], epoch_batches=8)
    loader = module.train_dataloader()
    seen: dict = {}
    for _ in range(2):
        for batch in loader:
            for key, cache_key in zip(batch["key"], batch["cache_key"]):
                seen.setdefault(key, set()).add(cache_key)
    assert sum(len(keys) for keys in seen.values()) > 0 and max(len(keys) for keys in seen.values()) == 1
    assert any(not key.endswith(":0") for keys in seen.values() for key in keys)  # drawn, not frame 0


def test_heldout_image_pairs_reference_their_partner(dataset):
    module = make_module(dataset)
    batches = module.heldout_samples("test", 2, kind="image")
    assert len(batches) == 1 and batches[0]["video"].shape[:3] == (2, 3, 1)
    batch = batches[0]
    assert batch["key"][0].endswith("-a") and batch["key"][1].endswith("-b")
    torch.testing.assert_close(batch["reference"][0], batch["video"][1, :, 0])
    torch.testing.assert_close(batch["reference"][1], batch["video"][0, :, 0])
    partner = batch["cache_key"][1].split("|")[0]  # the partner's key@digest
    assert batch["cache_key"][0].endswith(f"|ref{partner}:0")
    test_keys = [key for batch in module.test_dataloader() for key in batch["key"]]
    assert len(test_keys) == 2 and all(key.startswith("puppet-s3-test-") and key.endswith("-clip") for key in test_keys)


def _corrupt_first_video(source, target):
    """Copy a shard, replacing the first mp4 member's bytes with same-length garbage."""
    with tarfile.open(source) as reader, tarfile.open(target, "w") as writer:
        corrupted = None
        for member in reader.getmembers():
            data = reader.extractfile(member).read()
            if corrupted is None and member.name.endswith(".mp4"):
                corrupted, data = member.name.split(".")[0], bytes(len(data))
            writer.addfile(member, io.BytesIO(data))
    return corrupted


def test_train_images_are_drawn_by_k_over_6_groups(dataset):
    manifest = json.loads((dataset / "manifest.json").read_text())["splits"]["train"]
    assert sum(manifest["buckets"]["images"].values()) == manifest["images"]["samples"]
    groups = make_module(dataset, video_image_ratio=[6, 1]).train_image_groups()
    assert manifest["video"]["samples"] // 6 == 1 and len(groups.counts) == 2
    assert groups.num_groups == 2  # K/6 = 1 group, but each aspect bucket has at least one of its own
    assert sum(groups.counts.values()) == manifest["images"]["samples"]
    assert make_module(dataset, image_groups=False).train_image_groups() is None


def test_reference_views_are_more_frames_of_the_identity_outside_the_window(dataset):
    batch = next(iter(make_module(dataset, reference_views=3, video_image_ratio=[1]).train_dataloader()))
    views = batch["reference_views"]
    assert views.shape == (2, 3, *batch["reference"].shape[1:]) and views.min() >= -1 and views.max() <= 1
    (fixed,) = make_module(dataset, reference_views=3).heldout_samples("test", 1)
    again = make_module(dataset, reference_views=3).heldout_samples("test", 1)[0]
    assert torch.equal(fixed["reference_views"], again["reference_views"])  # evaluation views are fixed
    assert not any(torch.equal(view, fixed["video"][0, :, i]) for view in fixed["reference_views"][0] for i in range(fixed["video"].shape[2]))
    assert "reference_views" not in next(iter(make_module(dataset).train_dataloader()))


def test_bad_shards_are_skipped_and_counted(dataset, tmp_path):
    good = [str(dataset / "val" / name) for name in ("shard-000000.tar", "shard-000001.tar")]
    truncated, corrupted = str(tmp_path / "shard-000002.tar"), str(tmp_path / "shard-000003.tar")
    shutil.copy(good[0], truncated)
    os.truncate(truncated, os.path.getsize(truncated) // 2)
    bad_key = _corrupt_first_video(good[1], corrupted)
    module = make_module(val_urls=[good[0], truncated, corrupted], val_samples=100)
    batches = [module.on_before_batch_transfer(batch, 0) for batch in module.val_dataloader()]
    keys = [key for batch in batches for key in batch["key"]]
    assert bad_key == "puppet-s3-val-c00002-clip" and bad_key not in keys and "puppet-s3-val-c00003-clip" in keys  # val shard 1: clips 2 and 3
    assert 3 <= len(keys) <= 4  # 2 good, 1 from the corrupted shard, 0 or 1 before the truncation
    report = module.bad_sample_report()
    assert report.get("unreadable_video") == 1 and report.get("truncated") == 1, report
    assert sum(report.values()) == 2
    assert module.log_bad_samples() == "data: 2 bad samples skipped (truncated 1, unreadable_video 1)"


def test_bad_samples_in_workers_reach_the_main_process(dataset, tmp_path):
    corrupted = str(tmp_path / "shard-000000.tar")
    _corrupt_first_video(str(dataset / "train" / "shard-000000.tar"), corrupted)
    module = make_module(train_urls=[corrupted, str(dataset / "train" / "shard-000001.tar")], num_workers=2,
                         epoch_batches=6)
    assert len(train_batches(module)) == 6
    assert module.bad_sample_report().get("unreadable_video", 0) >= 1


@pytest.mark.timeout(240)  # a forked worker deadlocks here, so a regression fails in minutes, not at the global timeout
@pytest.mark.parametrize("start", [{}, {"multiprocessing_context": "spawn"}], ids=["default", "spawn"])
def test_workers_start_after_this_process_decoded_a_video(dataset, start):
    # Decoding leaves PyAV's per-thread swscale context (slice threads included) in this process;
    # a forked worker inherits it without its threads and hangs converting its first frame.
    assert sum(len(batch["key"]) for batch in make_module(dataset, val_samples=2).val_dataloader()) == 2
    module = make_module(dataset, num_workers=2, **start)  # spawn: every pipeline stage pickles
    batches = train_batches(module)
    assert len(batches) == 3 and all(1 <= batch["video"].shape[0] <= 2 for batch in batches)  # a bucket may leave early when many wait


@pytest.mark.timeout(240)
def test_workers_start_inside_a_fit_with_image_groups(dataset):
    # In a fit the datamodule holds the trainer (generators, locks): no pipeline stage may reach it,
    # or a worker started from the fork server cannot unpickle the pipeline.
    module = make_module(dataset, num_workers=1, video_image_ratio=[6, 1])
    module.trainer = SimpleNamespace(fit_loop=(step for step in range(3)))
    assert module.train_image_groups() is not None
    batches = train_batches(module)
    assert len(batches) == 3


def test_missing_data_gives_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m data.synthetic"):
        make_module(tmp_path / "absent").setup("fit")
    with pytest.raises(FileNotFoundError, match="python -m data.synthetic"):
        make_module(tmp_path).setup("fit")  # exists, but no manifest
    missing = str(tmp_path / "train-{000000..000001}.tar")
    with pytest.raises(FileNotFoundError, match="train-000000.tar does not exist"):
        make_module(train_urls=missing).train_dataloader()


def _ddp_worker(rank, root, out_dir):
    """One gloo rank: record its validation keys and first training cache keys."""
    dist.init_process_group("gloo", init_method=f"file://{out_dir}/rendezvous", rank=rank, world_size=2)
    try:
        module = make_module(root, val_samples=4, epoch_batches=2, num_workers=1)  # no process group in workers
        val_keys = [key for batch in module.val_dataloader() for key in batch["key"]]
        train_keys = [key for batch in module.train_dataloader() for key in batch["cache_key"]]
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as file:
            json.dump({"val": val_keys, "train": train_keys}, file)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two spawned processes each import torch + lightning: ~15 s on 2 cores
def test_ddp_ranks_get_distinct_data(dataset, tmp_path):
    mp.spawn(_ddp_worker, args=(str(dataset), str(tmp_path)), nprocs=2)
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert ranks[0]["val"] and ranks[1]["val"] and not set(ranks[0]["val"]) & set(ranks[1]["val"])
    assert len(ranks[0]["val"]) + len(ranks[1]["val"]) == 4
    assert ranks[0]["train"] != ranks[1]["train"]


@pytest.mark.parametrize("overrides, message", [
    (dict(batch_size=0), "batch_size=0: must be an integer >= 1"),
    (dict(batch_size="abc"), "batch_size=abc: must be an integer >= 1"),
    (dict(num_workers=-1), "num_workers=-1: must be an integer >= 0"),
    (dict(resolutions=None, resolution=100), "resolution=100: resolutions must be positive multiples of 16"),
    (dict(resolutions={64: 0.5, 40: 0.5}), "resolutions={64: 0.5, 40: 0.5}: resolutions must be positive multiples of 16"),
    (dict(frame_buckets=[5, 6]), r"frame_buckets=\[5, 6\]: must be a list of frame counts 1 \+ 4k"),
    (dict(reference="last"), "reference=last: must be one of random, first"),
    (dict(multiprocessing_context="threads"), "multiprocessing_context='threads': must be a process start method of this platform"),
])
def test_settings_that_cannot_work_are_rejected_naming_the_key(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        make_module(tmp_path, **overrides)
