"""The LightningDataModule: shards -> bucketed, pose-rendered, region-weighted batches.

Training stream (per rank and dataloader worker, infinite, reproducible from ``seed``)::

    video shards (resampled) --+
                               +-- RatioMix (videos:images) -> shuffle raw samples -> decode
    image shards (resampled) --+     (bad samples skipped and counted)
      -> pair images -> K/6 groups -> bucket (size, frames, window), reference frame, crop/resize
                                  -> pose maps (target, reference) -> region weights
                                  -> BucketBatcher -> bad-sample counts -> with_epoch(epoch_batches)

Shards are drawn with ``wds.ResampledShards(deterministic=True)``, whose seed combines ``seed``,
the rank, the dataloader worker and the epoch; ``wds.WebDataset(resampled=True)`` is not used
because it seeds its shard sampler from the clock. The rank is read when a dataloader is built
(torch.distributed is not initialised inside DataLoader workers, so webdataset's own
``split_by_node`` would see rank 0 there). Evaluation (val / test / held-out) reads the
first ``val_samples`` video samples of the split in shard order, not resampled, and gives sample
``i`` to share ``i mod (world_size * workers)``: disjoint across ranks and workers, complete, and
the same set for any world size. Evaluation buckets are fixed: the first resolution's size
closest to the clip's aspect ratio, the largest frame bucket the clip fills, the window from
frame 0, and as reference the last frame outside the window (``reference="random"``) or frame
0 (``reference="first"``, the TikTok benchmark protocol, where the reference is a target frame).

Image samples (``kind == "image"``) are pose-transfer pairs: two images of one identity naming
each other in ``pair``; each becomes a one-frame target whose reference is its partner (an image
without a partner is its own reference). In training, image draws follow One-to-All's groups
(``image_groups``): the images are split by aspect bucket into K / 6 groups for K video samples
(6 = the video:image ratio) and a draw picks a group, then an image of it
(:class:`data.buckets.ImageGroups`, from the image buckets the manifest counts).

Bad samples: every worker counts them (``data.shards.BadSampleCounter``); each batch carries the
counts since the previous batch under ``bad_samples``, which :meth:`on_before_batch_transfer`
removes and adds to the totals (:meth:`bad_sample_report`, :meth:`log_bad_samples`).
"""

from __future__ import annotations

import json
import math
import os
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from itertools import islice
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.distributed as dist
import webdataset as wds
from lightning.pytorch.utilities.rank_zero import rank_zero_info

from common.geometry import WAN
from common.pose.augment import enhance_face
from common.pose.render import render_pose
from data.buckets import (
    BucketBatcher,
    BucketPlan,
    BucketSampler,
    GroupedImageDraw,
    ImageGroups,
    RatioMix,
    center_crop_box,
    closest_size,
    collate_samples,
    crop_resize_frames,
    crop_resize_masks,
    transform_boxes,
    transform_keypoints,
    worker_id,
    worker_rng,
)
from data.masks import region_weights
from data.processes import check_start_method, worker_context
from data.shards import URL_SCHEME, BadSampleCounter, Sample, decode_sample, parse_bucket, read_manifest
from data.synthetic import SyntheticConfig, ensure_dataset

PIXEL_KEYS = ("video", "pose", "reference", "reference_pose", "plate", "reference_views")
REFERENCE_POLICIES = ("random", "first")
PAIR_KEY = "__pair__"
IMAGE_SHARD_PREFIX = "images-"
CREATE_HINT = "create a dataset with `python -m data.synthetic out=DIR` (or set data.synthetic so the run makes it)"


def expand_shard_paths(urls: str | Sequence[str], what: str) -> list[str]:
    """Local shard paths from a list or brace pattern; raise FileNotFoundError naming a missing one."""
    paths = wds.shardlists.expand_urls(urls) if isinstance(urls, str) else [os.fspath(url) for url in urls]
    if not paths:
        raise FileNotFoundError(f"{what}: no shard paths given; {CREATE_HINT}")
    for path in paths:
        if URL_SCHEME.match(path):
            raise ValueError(f"{what}: {path} is a URL; only local shard paths are read (never pipe:)")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{what}: shard {path} does not exist; {CREATE_HINT}")
    return paths


def manifest_shards(root: str | os.PathLike, split: str) -> tuple[list[str], list[str]]:
    """(video shards, image shards) of ``split`` listed in ``root/manifest.json``, checked to exist."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset root {root} does not exist; {CREATE_HINT.replace('DIR', str(root))}")
    splits = read_manifest(root).get("splits", {})
    if split not in splits:
        raise FileNotFoundError(f"{root / 'manifest.json'} has no split {split!r} (has: {', '.join(splits)})")
    subsets = splits[split]
    videos = [str(root / path) for path in subsets.get("video", {}).get("shards", [])]
    images = [str(root / path) for path in subsets.get("images", {}).get("shards", [])]
    if not videos:
        raise FileNotFoundError(f"{root / 'manifest.json'}: split {split!r} lists no video shards; {CREATE_HINT}")
    expand_shard_paths(videos + images, f"{root / 'manifest.json'} split {split!r}")
    return videos, images


def split_by_kind(paths: Sequence[str]) -> tuple[list[str], list[str]]:
    """(video shards, image shards) of an explicit list: image shards are named ``images-*.tar``."""
    images = [path for path in paths if os.path.basename(path).startswith(IMAGE_SHARD_PREFIX)]
    return [path for path in paths if path not in images], images


def pair_images(raws: Iterable[dict], max_pending: int = 64) -> Iterator[dict]:
    """Join raw image samples with their ``pair`` partner: each of two partners yields once, carrying the other.

    Partners are expected close together in a shard; at most ``max_pending`` wait for theirs,
    after which the oldest is yielded alone. Samples whose metadata does not parse pass through
    alone (decoding then reports them).
    """
    waiting: dict[str, dict] = {}
    for raw in raws:
        partner = waiting.pop(_pair_of(raw), None)
        if partner is not None:
            yield {**partner, PAIR_KEY: raw}
            yield {**raw, PAIR_KEY: partner}
            continue
        waiting[raw.get("__key__", "")] = raw
        if len(waiting) > max_pending:
            yield waiting.pop(next(iter(waiting)))
    yield from waiting.values()


def _pair_of(raw: dict) -> str | None:
    """The ``pair`` key named in a raw sample's metadata, if it parses."""
    try:
        meta = json.loads(raw.get("json", b"{}"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return meta.get("pair") if isinstance(meta, dict) and isinstance(meta.get("pair"), str) else None


def stored_size(raw: dict) -> tuple[int, int] | None:
    """(height, width) from a raw sample's metadata, or None when it does not parse."""
    try:
        meta = json.loads(raw.get("json", b"{}"))
        return int(meta["height"]), int(meta["width"])
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError):
        return None


def decode_with_pair(raw: dict) -> tuple[Sample, Sample | None]:
    """Decode a raw sample and its joined partner (None when it has none); raises BadSample."""
    partner = raw.get(PAIR_KEY)
    return decode_sample(raw), None if partner is None else decode_sample(partner)


def process_rank() -> tuple[int, int]:
    """(rank, world_size) of this process: RANK / WORLD_SIZE, else torch.distributed, else (0, 1)."""
    rank, world_size, _, _ = wds.utils.pytorch_worker_info()
    return rank, world_size


def resample_seed(rank: int) -> int:
    """Per-stream part of ``wds.ResampledShards``' seed (its own formula, with the rank captured at build time)."""
    return rank * 1000 + worker_id()[0]


def take_share(samples: Iterable, rank: int = 0, world_size: int = 1) -> Iterator:
    """Items ``i`` with ``i mod shares == share`` of this rank and dataloader worker: a disjoint, complete split."""
    worker, num_workers = worker_id()
    yield from islice(samples, rank * num_workers + worker, None, world_size * num_workers)


def collate_batch(samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Collate prepared samples; uint8 pixels become float in [-1, 1]."""
    batch = collate_samples(samples)
    for name in PIXEL_KEYS:
        if name in batch:
            batch[name] = batch[name].float() / 127.5 - 1.0
    return batch


@dataclass(frozen=True)
class AspectBucket:
    """A raw sample's image-group bucket: the size among ``sizes`` closest to its stored aspect ratio (None when unknown)."""

    sizes: Sequence[tuple[int, int]]

    def __call__(self, raw: dict) -> tuple[int, int] | None:
        size = stored_size(raw)
        return None if size is None else closest_size(*size, self.sizes)


class BadSampleDeltas:
    """Pipeline stage: attach to each batch the bad-sample counts added since the previous batch."""

    def __init__(self, counter: BadSampleCounter):
        self.counter = counter
        self.reported: Counter = Counter()

    def __call__(self, batches: Iterable[dict]) -> Iterator[dict]:
        """Add ``bad_samples`` {reason: count} to every batch."""
        for batch in batches:
            now = Counter(self.counter.as_dict())
            batch["bad_samples"] = dict(now - self.reported)
            self.reported = now
            yield batch


class SamplePreparer:
    """Pipeline stage: decoded (sample, partner) -> a prepared training sample (uint8 pixels, tensors).

    ``fixed`` selects evaluation buckets (see the module docstring); otherwise every choice is
    drawn from a generator seeded by (seed, rank, worker, epoch).
    """

    def __init__(self, sampler: BucketSampler, fixed: bool, reference: str = "random", w_roi: float = 3.0,
                 roi_conf: float = 0.8, text_mask: bool = True, pose_conf_threshold: float = 0.3, seed: int = 0,
                 rank: int = 0, face_enhancement: float = 0.0, lightened_poses: bool = False, reference_views: int = 0,
                 whole_clips: bool = False):
        if reference not in REFERENCE_POLICIES:
            raise ValueError(f"reference policy {reference!r} is not one of {REFERENCE_POLICIES}")
        self.sampler = sampler
        self.fixed = fixed
        self.reference = reference
        self.w_roi, self.roi_conf, self.text_mask = w_roi, roi_conf, text_mask
        self.pose_conf_threshold = pose_conf_threshold
        self.seed, self.rank = seed, rank
        self.face_enhancement = 0.0 if fixed else face_enhancement  # a training augmentation only
        self.lightened_poses = lightened_poses
        self.reference_views = reference_views
        self.whole_clips = whole_clips  # evaluation of long clips: the whole clip (its largest 1 + 4k frames), not a frame bucket
        self.donor: np.ndarray | None = None  # the previous sample's reference pose: another person's face for enhancement
        self.epoch = -1

    def __call__(self, items: Iterable[tuple[Sample, Sample | None]]) -> Iterator[dict]:
        """Prepare a stream; a new pass draws from the next epoch's generator."""
        self.epoch += 1
        rng = worker_rng(self.seed, self.rank, self.epoch, 0x70726570)
        for sample, partner in items:
            yield self.prepare(sample, partner, rng)

    def plan(self, sample: Sample, rng: np.random.Generator) -> BucketPlan:
        """The bucket of one sample."""
        num_frames, height, width = sample.frames.shape[:3]
        if self.fixed:
            return self.sampler.plan_fixed(height, width, num_frames, whole_clip=self.whole_clips)
        return self.sampler.plan(height, width, num_frames, rng)

    def reference_index(self, key: str, num_frames: int, window: np.ndarray, rng: np.random.Generator) -> int:
        """Reference frame: ``first`` = frame 0; ``random`` = a frame outside the window.

        Evaluation (fixed) takes the last frame outside the window, so no generated frame can be
        copied from the reference. Training with fixed windows draws one reference per clip
        (seeded by the key), so the latent cache hits; otherwise a new one each time.
        """
        outside = np.setdiff1d(np.arange(num_frames), window)
        if self.reference == "first" or not len(outside):
            return 0
        if self.fixed:
            return int(outside[-1])
        if not self.sampler.random_window:
            rng = np.random.default_rng([self.seed, zlib.crc32(key.encode())])
        return int(rng.choice(outside))

    def view_indices(self, num_frames: int, window: np.ndarray, reference_index: int, rng: np.random.Generator) -> np.ndarray:
        """``reference_views`` more frames of the identity (EverAnimate's multi-view identity memory).

        Frames outside the window and other than the reference: evenly spaced in evaluation,
        drawn in training (with repeats when the clip has too few); the window's frames when the
        clip has nothing outside it.
        """
        pool = np.setdiff1d(np.arange(num_frames), np.append(window, reference_index))
        if not len(pool):
            pool = np.asarray(window)
        if self.fixed:
            return pool[np.linspace(0, len(pool) - 1, self.reference_views).round().astype(int)]
        return rng.choice(pool, size=self.reference_views, replace=len(pool) < self.reference_views)

    def prepare(self, sample: Sample, partner: Sample | None, rng: np.random.Generator) -> dict:
        """Crop, resize, render and weigh one sample into the per-sample form of the training batch."""
        plan = self.plan(sample, rng)
        height, width = plan.size
        frames = crop_resize_frames(sample.frames[plan.frame_indices], plan.box, plan.size)  # (T, 3, H, W)
        keypoints = transform_keypoints(sample.keypoints[plan.frame_indices], plan.box, plan.size)  # (T, 133, 3)
        if partner is None:
            source, reference_index = sample, self.reference_index(sample.key, len(sample.frames), plan.frame_indices, rng)
        else:
            source, reference_index = partner, 0
        reference_box = center_crop_box(*source.frames.shape[1:3], plan.size)
        reference = crop_resize_frames(source.frames[reference_index:reference_index + 1], reference_box, plan.size)[0]
        reference_keypoints = transform_keypoints(source.keypoints[reference_index], reference_box, plan.size)
        text_boxes = sample.meta["text_boxes"] if self.text_mask else []
        boxes = transform_boxes(text_boxes, plan.box, plan.size, plan.frame_indices)
        has_mask = sample.person_mask is not None
        if has_mask:
            person_mask = crop_resize_masks(sample.person_mask[plan.frame_indices], plan.box, plan.size)
        else:
            person_mask = torch.ones(len(plan.frame_indices), height, width, dtype=torch.bool)
        views = {}
        if self.reference_views:
            indices = self.view_indices(len(source.frames), plan.frame_indices if partner is None else np.zeros(0, int), reference_index, rng)
            views["reference_views"] = crop_resize_frames(source.frames[indices], reference_box, plan.size)  # uint8 (V, 3, H, W)
        has_plate = sample.plate is not None
        if has_plate:
            plate = crop_resize_frames(sample.plate[None], plan.box, plan.size)[0]
        else:
            plate = torch.zeros(3, height, width, dtype=torch.uint8)
        return {
            "video": frames.permute(1, 0, 2, 3),  # uint8 (3, T, H, W)
            "pose": self.driving_pose(keypoints, reference_keypoints, height, width, rng).permute(3, 0, 1, 2),  # uint8 (3, T, H, W)
            "reference": reference,  # uint8 (3, H, W)
            "reference_pose": self.render(reference_keypoints[None], height, width)[0].permute(2, 0, 1),
            "keypoints": torch.from_numpy(keypoints),
            "reference_keypoints": torch.from_numpy(reference_keypoints),
            "loss_weight": region_weights(keypoints, height, width, boxes, self.w_roi, self.roi_conf,
                                          self.pose_conf_threshold),  # (F, h, w)
            "person_mask": person_mask,  # bool (T, H, W)
            "has_person_mask": has_mask,
            "plate": plate,  # uint8 (3, H, W): the scene without the person, cropped like the frames
            "has_plate": has_plate,
            "key": sample.key,
            "cache_key": self.cache_key(sample, plan, source, reference_index),
        } | views

    def render(self, keypoints: np.ndarray, height: int, width: int, lightened: bool = False) -> torch.Tensor:
        """Pose maps uint8 (T, H, W, 3) of keypoints (T, 133, 3)."""
        return torch.from_numpy(render_pose(keypoints, height, width, conf_threshold=self.pose_conf_threshold, lightened=lightened))

    def driving_pose(self, keypoints: np.ndarray, reference_keypoints: np.ndarray, height: int, width: int,
                     rng: np.random.Generator) -> torch.Tensor:
        """The rendered driving poses: face-enhanced (One-to-All) with probability ``face_enhancement``, drawn lightened when enhanced or ``lightened_poses``."""
        donor, self.donor = self.donor, reference_keypoints
        lightened = self.lightened_poses
        if self.face_enhancement > 0 and donor is not None and rng.random() < self.face_enhancement:
            keypoints, changed = enhance_face(keypoints, donor, self.pose_conf_threshold)
            lightened = lightened or changed
        return self.render(keypoints, height, width, lightened)

    def cache_key(self, sample: Sample, plan: BucketPlan, source: Sample, reference_index: int) -> str:
        """Unique id of (sample content, window start/stride/frames, crop box, size, reference): the latent cache key.

        The samples' content digests are part of it, so latents of a regenerated or re-prepared
        dataset never mix with stale ones cached under the same sample keys.
        """
        indices = plan.frame_indices
        stride = int(indices[1] - indices[0]) if len(indices) > 1 else 1
        box = ",".join(str(value) for value in plan.box)
        return (f"{sample.key}@{sample.digest}|start{int(indices[0])}|stride{stride}|frames{len(indices)}|crop{box}"
                f"|size{plan.size[0]}x{plan.size[1]}|ref{source.key}@{source.digest}:{reference_index}"
                + ("|lightened" if self.lightened_poses else ""))


COUNT_MINIMUMS = {"batch_size": 1, "num_workers": 0, "frame_stride": 1, "epoch_batches": 1, "val_samples": 1, "reference_views": 0}


def _is_int(value: Any) -> bool:
    """Whether ``value`` is an integer (not a bool, a float or a string)."""
    return isinstance(value, int) and not isinstance(value, bool)


def check_counts(**counts: Any) -> None:
    """Raise ValueError naming a count (batch size, workers, ...) that is not an integer at or above its minimum."""
    for key, value in counts.items():
        if not _is_int(value) or value < COUNT_MINIMUMS[key]:
            raise ValueError(f"{key}={value}: must be an integer >= {COUNT_MINIMUMS[key]}")


def check_buckets(resolution: Any, resolutions: Any, frame_buckets: Any) -> None:
    """Raise ValueError naming a resolution that is not a positive multiple of 16 or a frame count that is not 1 + 4k."""
    key, value = ("resolution", resolution) if resolutions is None else ("resolutions", resolutions)
    sizes = list(value) if isinstance(value, Mapping) else [value]
    if value is not None and not (sizes and all(_is_int(size) and size > 0 and size % WAN.token_space == 0 for size in sizes)):
        raise ValueError(f"{key}={value}: resolutions must be positive multiples of {WAN.token_space} (e.g. 128, 256, 512)")
    counts = frame_buckets if isinstance(frame_buckets, Sequence) and not isinstance(frame_buckets, str) else []
    if not (counts and all(_is_int(count) and count >= 1 and (count - 1) % WAN.vae_time == 0 for count in counts)):
        valid = ", ".join(str(1 + WAN.vae_time * k) for k in range(5))
        raise ValueError(f"frame_buckets={frame_buckets}: must be a list of frame counts 1 + {WAN.vae_time}k ({valid}, ...)")


class AnimationDataModule(L.LightningDataModule):
    """Bucketed pose-animation batches from WebDataset shards (see the module docstring).

    Data comes from ``root`` (a dataset directory with ``manifest.json``) or explicit
    ``train_urls`` / ``val_urls`` / ``test_urls`` (lists or brace patterns; ``images-*.tar`` are
    image shards). ``synthetic`` ({field: value} of ``data.synthetic.SyntheticConfig``) makes
    ``prepare_data`` create (or reuse) the synthetic dataset in ``root``.
    """

    def __init__(self, root: str | None = None, train_urls: str | Sequence[str] | None = None,
                 val_urls: str | Sequence[str] | None = None, test_urls: str | Sequence[str] | None = None,
                 synthetic: Mapping[str, Any] | None = None, batch_size: int = 2, num_workers: int = 0,
                 resolution: int | None = None, resolutions: Mapping[int, float] | None = None, aspect_ratios: Sequence | Mapping | None = None,
                 frame_buckets: Sequence[int] = (9, 17), frame_probs: Sequence[float] | None = None,
                 frame_stride: int = 1, video_image_ratio: Sequence[float] = (6, 1), epoch_batches: int = 100,
                 val_samples: int = 16, random_window: bool = True, reference: str = "random", w_roi: float = 3.0,
                 roi_conf: float = 0.8, text_mask: bool = True, pose_conf_threshold: float = 0.3, seed: int = 0,
                 shuffle_buffer: int = 64, max_pending: int | None = None, face_enhancement: float = 0.0,
                 lightened_poses: bool = False, image_groups: bool = True, reference_views: int = 0,
                 multiprocessing_context: str = "forkserver"):
        super().__init__()
        if root is None and train_urls is None and val_urls is None and test_urls is None:
            raise ValueError(f"AnimationDataModule needs a dataset root or shard urls; {CREATE_HINT}")
        if synthetic is not None and root is None:
            raise ValueError("synthetic data needs a root directory to write it to")
        check_counts(batch_size=batch_size, num_workers=num_workers, frame_stride=frame_stride, epoch_batches=epoch_batches,
                     val_samples=val_samples, reference_views=reference_views)
        check_buckets(resolution, resolutions, frame_buckets)
        if reference not in REFERENCE_POLICIES:
            raise ValueError(f"reference={reference}: must be one of {', '.join(REFERENCE_POLICIES)}")
        check_start_method("multiprocessing_context", multiprocessing_context)
        self.multiprocessing_context = multiprocessing_context
        self.root = root
        self.urls = {"train": train_urls, "val": val_urls, "test": test_urls}
        self.synthetic = None if synthetic is None else dict(synthetic)
        self.batch_size, self.num_workers = batch_size, num_workers
        self.sampler = BucketSampler(
            dict(resolutions or {resolution or 128: 1.0}), aspect_ratios, list(frame_buckets),
            None if frame_probs is None else list(frame_probs), frame_stride, random_window)
        weights = [float(weight) for weight in video_image_ratio] + [0.0]  # the image part is optional
        self.video_weight, self.image_weight = weights[0], weights[1]
        self.epoch_batches, self.val_samples = epoch_batches, val_samples
        self.preparer_options = dict(reference=reference, w_roi=w_roi, roi_conf=roi_conf, text_mask=text_mask,
                                     pose_conf_threshold=pose_conf_threshold, seed=seed,
                                     face_enhancement=face_enhancement, lightened_poses=lightened_poses,
                                     reference_views=reference_views)
        if not 0.0 <= face_enhancement <= 1.0:
            raise ValueError(f"face_enhancement={face_enhancement}: a probability in [0, 1]")
        self.seed, self.shuffle_buffer, self.max_pending = seed, shuffle_buffer, max_pending
        self.image_groups = image_groups
        self.bad_totals: Counter = Counter()

    # ------------------------------------------------------------------ data sources

    def prepare_data(self) -> None:
        """Create (or reuse) the synthetic dataset in ``root`` when ``synthetic`` is set."""
        if self.synthetic is not None:
            ensure_dataset(self.root, SyntheticConfig(**self.synthetic), progress=False)

    def setup(self, stage: str | None = None) -> None:
        """Check that the shards of the stage's splits exist (raises FileNotFoundError saying how to make them)."""
        splits = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}.get(stage, ())
        for split in splits:
            self.shards(split)

    def shards(self, split: str) -> tuple[list[str], list[str]]:
        """(video shards, image shards) of a split, from explicit urls or the root's manifest."""
        urls = self.urls.get(split)
        if urls is not None:
            return split_by_kind(expand_shard_paths(urls, f"{split}_urls"))
        if self.root is None:
            raise FileNotFoundError(f"no {split}_urls and no dataset root for split {split!r}; {CREATE_HINT}")
        return manifest_shards(self.root, split)

    def long_shards(self, split: str) -> list[str]:
        """The long clips of a split: the manifest's ``long`` subset (``data.synthetic long_clips``), else the split's video shards."""
        if self.urls.get(split) is not None or self.root is None:
            return self.shards(split)[0]
        manifest = read_manifest(self.root)["splits"].get(split, {})
        shards = [str(Path(self.root) / path) for path in manifest.get("long", {}).get("shards", [])]
        if not shards:
            raise FileNotFoundError(f"{Path(self.root) / 'manifest.json'}: split {split!r} has no long clips; "
                                    "make some with data.synthetic.long_clips=N (or data.synthetic long_clips=N out=DIR)")
        return expand_shard_paths(shards, f"{self.root} long clips of {split!r}")

    def raw_samples(self, urls: Sequence[str], counter: BadSampleCounter,
                    resample_rank: int | None = None) -> wds.DataPipeline:
        """Raw webdataset samples of shards: in order, or resampled (seeded by seed, rank, worker, epoch)."""
        if resample_rank is not None:
            shards = wds.ResampledShards(list(urls), seed=self.seed, deterministic=True,
                                         worker_seed=partial(resample_seed, resample_rank))
        else:
            shards = wds.SimpleShardList(list(urls))
        return wds.DataPipeline(shards, wds.tarfile_to_samples(handler=counter.handler))

    def train_image_groups(self) -> ImageGroups | None:
        """One-to-All's K/6 image groups from the manifest's train image buckets; None when off or not countable."""
        if not self.image_groups or self.root is None or self.urls["train"] is not None:
            return None
        train = read_manifest(self.root).get("splits", {}).get("train", {})
        buckets = train.get("buckets", {}).get("images")
        if not buckets:
            rank_zero_info(f"{self.root}/manifest.json counts no image buckets: images are drawn uniformly, not by group")
            return None
        counts: Counter = Counter()
        for bucket, count in buckets.items():
            height, width, _ = parse_bucket(bucket)
            counts[closest_size(height, width, self.sampler.sizes[self.sampler.resolutions[0]])] += int(count)
        return ImageGroups.partition(counts, int(train.get("video", {}).get("samples", 0)),
                                     self.video_weight / self.image_weight)

    # ------------------------------------------------------------------ pipelines

    def train_dataset(self) -> wds.DataPipeline:
        """The infinite training pipeline, ``epoch_batches`` batches per epoch and rank."""
        videos, images = self.shards("train")
        rank, _ = process_rank()
        counter = BadSampleCounter()
        sources, weights = [self.raw_samples(videos, counter, resample_rank=rank)], [self.video_weight]
        if images and self.image_weight > 0:
            stages = [self.raw_samples(images, counter, resample_rank=rank), pair_images]
            groups = self.train_image_groups()
            if groups is not None:
                # a plain callable, not the bound method: workers unpickle the pipeline, and the datamodule holds the trainer
                stages.append(GroupedImageDraw(groups, AspectBucket(self.sampler.sizes[self.sampler.resolutions[0]]), seed=self.seed, rank=rank))
            sources.append(wds.DataPipeline(*stages))
            weights.append(self.image_weight)
        batches_per_worker = math.ceil(self.epoch_batches / max(1, self.num_workers))
        return wds.DataPipeline(
            RatioMix(sources, weights, seed=self.seed, rank=rank),
            wds.detshuffle(self.shuffle_buffer, initial=self.shuffle_buffer, seed=self.seed),
            wds.map(decode_with_pair, handler=counter.handler),
            SamplePreparer(self.sampler, fixed=False, rank=rank, **self.preparer_options),
            BucketBatcher(self.batch_size, self.max_pending, partial=False, collate_fn=collate_batch),
            BadSampleDeltas(counter),
        ).with_epoch(batches_per_worker)

    def eval_dataset(self, split: str, samples: int, by_rank: bool = True, kind: str = "video") -> wds.DataPipeline:
        """The first ``samples`` samples of a split in shard order, fixed buckets, this rank's/worker's share.

        ``kind``: ``video`` (held-out clips in the largest frame bucket they fill), ``image``
        (held-out image pairs), ``long`` (the split's long clips, whole).
        """
        videos, images = self.shards(split)
        rank, world_size = process_rank() if by_rank else (0, 1)
        counter = BadSampleCounter()
        if kind == "video":
            source = self.raw_samples(videos, counter)
        elif kind == "long":
            source = self.raw_samples(self.long_shards(split), counter)
        elif kind == "image":
            if not images:
                raise FileNotFoundError(f"split {split!r} has no image shards")
            source = wds.DataPipeline(self.raw_samples(images, counter), pair_images)
        else:
            raise ValueError(f"kind must be 'video', 'image' or 'long', got {kind!r}")
        return wds.DataPipeline(
            source,
            wds.slice(samples),
            partial(take_share, rank=rank, world_size=world_size),
            wds.map(decode_with_pair, handler=counter.handler),
            SamplePreparer(self.sampler, fixed=True, whole_clips=kind == "long", **self.preparer_options),
            BucketBatcher(self.batch_size, self.max_pending, partial=True, collate_fn=collate_batch),
            BadSampleDeltas(counter),
        )

    def loader(self, dataset: wds.DataPipeline) -> wds.WebLoader:
        """A WebLoader of in-pipeline batches (persistent workers keep per-worker epoch counters).

        Workers start by ``multiprocessing_context`` (:mod:`data.processes`): a forked worker
        can deadlock in the thread pool a video decoded in the parent left behind.
        """
        context = worker_context(self.multiprocessing_context) if self.num_workers > 0 else None  # DataLoader refuses one without workers
        return wds.WebLoader(dataset, batch_size=None, num_workers=self.num_workers,
                             persistent_workers=self.num_workers > 0, multiprocessing_context=context)

    def train_dataloader(self) -> wds.WebLoader:
        """Training batches: ``epoch_batches`` per epoch on every rank."""
        return self.loader(self.train_dataset()).with_epoch(self.epoch_batches)

    def val_dataloader(self) -> wds.WebLoader:
        """Validation batches of the ``val`` split (held-out identities)."""
        return self.loader(self.eval_dataset("val", self.val_samples))

    def test_dataloader(self) -> wds.WebLoader:
        """Test batches of the ``test`` split."""
        return self.loader(self.eval_dataset("test", self.val_samples))

    def heldout_samples(self, split: str, n: int, kind: str = "video") -> list[dict]:
        """The first ``n`` samples of a split as collated batches, in this process (for generation scripts)."""
        batches = list(self.eval_dataset(split, n, by_rank=False, kind=kind))
        for batch in batches:
            self.take_bad_samples(batch)
        return batches

    # ------------------------------------------------------------------ bad samples

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Move the batch's bad-sample counts into the totals before the batch reaches the model."""
        if isinstance(batch, dict):
            self.take_bad_samples(batch)
        return batch

    def take_bad_samples(self, batch: dict) -> None:
        """Pop ``bad_samples`` from a batch and add it to the totals."""
        self.bad_totals.update(batch.pop("bad_samples", {}))

    def bad_sample_report(self) -> dict[str, int]:
        """Bad samples skipped so far in this process, per reason."""
        return dict(self.bad_totals)

    def log_bad_samples(self, module: L.LightningModule | None = None) -> str:
        """Sum the counts over ranks, log ``data/bad_samples/<reason>`` through ``module`` and print one line.

        Call it on every rank (e.g. from a Callback's ``on_train_epoch_end``): it gathers across
        ranks when torch.distributed is initialised. Returns the line.
        """
        totals = Counter(self.bad_totals)
        if dist.is_available() and dist.is_initialized():
            gathered = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, dict(self.bad_totals))
            totals = sum((Counter(counts) for counts in gathered), Counter())
        if module is not None:
            for reason, count in sorted(totals.items()):
                module.log(f"data/bad_samples/{reason}", float(count), rank_zero_only=True)
        parts = ", ".join(f"{reason} {count}" for reason, count in sorted(totals.items()))
        line = f"data: {sum(totals.values())} bad samples skipped" + (f" ({parts})" if parts else "")
        rank_zero_info(line)
        return line
