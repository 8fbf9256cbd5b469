"""Streaming buckets: resolution / aspect-ratio sizes, frame counts, video:image mix, batching.

One-to-All's bucket sampler, made streaming: a sample draws a resolution by probability, takes
the size of that resolution whose aspect ratio is closest to its own (log-ratio distance), is
centre-cropped to that aspect ratio and resized; a clip draws a frame count (1 + 4k) and falls
back to the largest count it can fill. :class:`BucketBatcher` then groups samples of the same
(size, frames) into batches with bounded memory. Sizes are (height, width) and multiples of the
token side (16 for Wan, from :data:`common.geometry.WAN`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import IterableDataset

from common.geometry import WAN, Compression

# Aspect ratios written width:height as for displays (16:9 is landscape).
COMMON_ASPECT_RATIOS = ("9:16", "2:3", "3:4", "1:1", "4:3", "3:2", "16:9")

Size = tuple[int, int]  # (height, width) in pixels


class CropBox(NamedTuple):
    """A crop of a stored frame, in pixels: rows [top, top + height), columns [left, left + width)."""

    top: int
    left: int
    height: int
    width: int


def parse_ratio(ratio: str | float) -> float:
    """Width / height of a ratio written ``"W:H"`` or given as a number."""
    if isinstance(ratio, str):
        parts = ratio.split(":")
        if len(parts) != 2:
            raise ValueError(f"aspect ratio {ratio!r} is not written W:H (e.g. '16:9')")
        value = float(parts[0]) / float(parts[1])
    else:
        value = float(ratio)
    if not value > 0:
        raise ValueError(f"aspect ratio {ratio!r} is not positive")
    return value


def aspect_sizes(resolution: int, ratios: Sequence[str | float] = COMMON_ASPECT_RATIOS,
                 compression: Compression = WAN) -> list[Size]:
    """(H, W) sizes of area <= resolution^2 for each width:height ratio, sides floored to token multiples."""
    step = compression.token_space
    sizes = set()
    for ratio in ratios:
        width_per_height = parse_ratio(ratio)
        height = int(resolution / math.sqrt(width_per_height)) // step * step
        width = int(resolution * math.sqrt(width_per_height)) // step * step
        if height < step or width < step:
            raise ValueError(f"resolution {resolution} at ratio {ratio} leaves a side under {step} px")
        compression.check_size(height, width)
        sizes.add((height, width))
    return sorted(sizes, key=lambda size: size[1] / size[0])


def closest_size(height: int, width: int, sizes: Sequence[Size]) -> Size:
    """The size whose aspect ratio is closest to height x width (log-ratio distance)."""
    source = math.log(height / width)
    return min(sizes, key=lambda size: abs(math.log(size[0] / size[1]) - source))


def center_crop_box(height: int, width: int, size: Size) -> CropBox:
    """The largest centred crop of a height x width frame with the aspect ratio of ``size``."""
    target_h, target_w = size
    if height * target_w > width * target_h:  # source is taller than the target: cut rows
        crop_h, crop_w = min(height, round(width * target_h / target_w)), width
    else:
        crop_h, crop_w = height, min(width, round(height * target_w / target_h))
    return CropBox((height - crop_h) // 2, (width - crop_w) // 2, crop_h, crop_w)


def crop_resize_frames(frames: np.ndarray, box: CropBox, size: Size) -> torch.Tensor:
    """Crop uint8 frames (T, H, W, C) to ``box`` and resize (antialiased bilinear) to uint8 (T, C, h, w)."""
    crop = frames[:, box.top:box.top + box.height, box.left:box.left + box.width]  # (T, h0, w0, C)
    crop = torch.tensor(crop).permute(0, 3, 1, 2).float()  # (T, C, h0, w0), a copy of a possibly read-only array
    if (box.height, box.width) == tuple(size):
        return crop.round().to(torch.uint8)
    resized = F.interpolate(crop, size=tuple(size), mode="bilinear", align_corners=False, antialias=True)
    return resized.round().clamp(0, 255).to(torch.uint8)


def crop_resize_masks(masks: np.ndarray, box: CropBox, size: Size) -> torch.Tensor:
    """Crop bool masks (T, H, W) to ``box`` and resize (nearest) to bool (T, h, w)."""
    crop = masks[:, box.top:box.top + box.height, box.left:box.left + box.width]  # (T, h0, w0)
    crop = torch.tensor(crop)[:, None].float()  # (T, 1, h0, w0)
    resized = F.interpolate(crop, size=tuple(size), mode="nearest-exact")  # (T, 1, h, w)
    return resized[:, 0] > 0.5


def transform_keypoints(keypoints: np.ndarray, box: CropBox, size: Size) -> np.ndarray:
    """Map keypoints (..., K, 3) through the crop and resize; points that leave the frame get confidence 0.

    Pixel centres are at integer coordinates, matching ``align_corners=False`` resampling:
    ``x' = (x - left + 0.5) * scale - 0.5``.
    """
    out = np.array(keypoints, dtype=np.float32, copy=True)
    scale_y, scale_x = size[0] / box.height, size[1] / box.width
    out[..., 0] = (out[..., 0] - box.left + 0.5) * scale_x - 0.5
    out[..., 1] = (out[..., 1] - box.top + 0.5) * scale_y - 0.5
    inside = ((out[..., 0] >= -0.5) & (out[..., 0] <= size[1] - 0.5)
              & (out[..., 1] >= -0.5) & (out[..., 1] <= size[0] - 0.5))
    out[..., 2] = np.where(inside, out[..., 2], 0.0)
    return out


def transform_boxes(boxes: Iterable[Sequence[float]], box: CropBox, size: Size,
                    frame_indices: Sequence[int]) -> list[list[float]]:
    """Map ``[t, x0, y0, x1, y1]`` pixel-edge boxes into the window's frames and the cropped, resized frame.

    ``t`` becomes the position of stored frame ``t`` in ``frame_indices``; boxes on frames outside
    the window, or wholly outside the crop, are dropped.
    """
    position = {int(index): i for i, index in enumerate(frame_indices)}
    scale_y, scale_x = size[0] / box.height, size[1] / box.width
    out = []
    for t, x0, y0, x1, y1 in boxes:
        if int(t) not in position:
            continue
        nx0, nx1 = np.clip([(x0 - box.left) * scale_x, (x1 - box.left) * scale_x], 0, size[1])
        ny0, ny1 = np.clip([(y0 - box.top) * scale_y, (y1 - box.top) * scale_y], 0, size[0])
        if nx1 > nx0 and ny1 > ny0:
            out.append([position[int(t)], float(nx0), float(ny0), float(nx1), float(ny1)])
    return out


def normalized_probs(weights: Sequence[float], what: str) -> np.ndarray:
    """Weights as probabilities; raise if any is negative or all are zero."""
    weights = np.asarray(weights, dtype=np.float64)
    if weights.ndim != 1 or len(weights) == 0 or (weights < 0).any() or weights.sum() <= 0:
        raise ValueError(f"{what} must be non-negative weights with a positive sum, got {weights.tolist()}")
    return weights / weights.sum()


def frame_span(count: int, stride: int) -> int:
    """Stored frames covered by ``count`` frames taken every ``stride``."""
    return (count - 1) * stride + 1


def fallback_frame_count(num_frames: int, counts: Sequence[int], stride: int = 1,
                         compression: Compression = WAN) -> int:
    """Largest count in ``counts`` the clip can fill, else the largest 1 + 4k it can fill."""
    fitting = [count for count in counts if frame_span(count, stride) <= num_frames]
    if fitting:
        return max(fitting)
    return 1 + (num_frames - 1) // stride // compression.vae_time * compression.vae_time


def choose_frame_count(num_frames: int, counts: Sequence[int], probs: np.ndarray,
                       rng: np.random.Generator, stride: int = 1) -> int:
    """Draw a frame count; a clip too short for it falls back to the largest count it can fill."""
    count = int(counts[rng.choice(len(counts), p=probs)])
    if frame_span(count, stride) <= num_frames:
        return count
    return fallback_frame_count(num_frames, counts, stride)


def window_indices(num_frames: int, count: int, stride: int = 1,
                   rng: np.random.Generator | None = None) -> np.ndarray:
    """Stored-frame indices of a window of ``count`` frames every ``stride``: random start, or 0 without rng."""
    span = frame_span(count, stride)
    if span > num_frames:
        raise ValueError(f"a window of {count} frames at stride {stride} needs {span} frames, clip has {num_frames}")
    start = int(rng.integers(0, num_frames - span + 1)) if rng is not None else 0
    return start + stride * np.arange(count)


@dataclass(frozen=True)
class BucketPlan:
    """What to cut from one sample: output size, crop box and stored-frame indices."""

    size: Size
    box: CropBox
    frame_indices: np.ndarray

    @property
    def key(self) -> tuple[int, int, int]:
        """Bucket key (height, width, frames)."""
        return (self.size[0], self.size[1], len(self.frame_indices))


class BucketSampler:
    """Draws a bucket (resolution, closest aspect size, frame count, window) for each sample.

    ``resolutions``: {resolution: weight}. ``aspect_ratios``: None (:data:`COMMON_ASPECT_RATIOS`
    for every resolution), a list of width:height ratios for every resolution, or
    {resolution: [[H, W], ...]} explicit sizes. ``frame_counts`` (1 + 4k) with ``frame_probs``
    (None = uniform); frames are taken every ``stride`` stored frames; ``random_window`` draws
    the window start, else it is 0.
    """

    def __init__(self, resolutions: Mapping[int, float], aspect_ratios: Sequence | Mapping | None = None,
                 frame_counts: Sequence[int] = (1,), frame_probs: Sequence[float] | None = None,
                 stride: int = 1, random_window: bool = True, compression: Compression = WAN):
        if not resolutions:
            raise ValueError("resolutions is empty: give {resolution: probability}, e.g. {512: 0.5, 768: 0.5}")
        self.resolutions = [int(res) for res in resolutions]
        self.resolution_probs = normalized_probs(list(resolutions.values()), "resolution probabilities")
        self.sizes = {res: self._sizes_for(res, aspect_ratios, compression) for res in self.resolutions}
        for count in frame_counts:
            compression.check_frames(int(count))
        self.frame_counts = [int(count) for count in frame_counts]
        self.frame_probs = normalized_probs(
            [1.0] * len(self.frame_counts) if frame_probs is None else frame_probs, "frame probabilities")
        if len(self.frame_probs) != len(self.frame_counts):
            raise ValueError(f"{len(self.frame_probs)} frame probabilities for {len(self.frame_counts)} frame counts")
        if stride < 1:
            raise ValueError(f"frame stride must be >= 1, got {stride}")
        self.stride = stride
        self.random_window = random_window

    @staticmethod
    def _sizes_for(resolution: int, aspect_ratios, compression: Compression) -> list[Size]:
        """Sizes of one resolution from the ``aspect_ratios`` argument."""
        if aspect_ratios is None:
            return aspect_sizes(resolution, compression=compression)
        if isinstance(aspect_ratios, Mapping):
            explicit = {int(res): sizes for res, sizes in aspect_ratios.items()}
            if resolution not in explicit:
                raise ValueError(f"aspect_ratios has no sizes for resolution {resolution}")
            sizes = [(int(h), int(w)) for h, w in explicit[resolution]]
            for height, width in sizes:
                compression.check_size(height, width)
            return sizes
        return aspect_sizes(resolution, aspect_ratios, compression)

    def plan(self, height: int, width: int, num_frames: int, rng: np.random.Generator) -> BucketPlan:
        """Training draw: resolution by probability, closest size, frame count with fallback, window."""
        resolution = self.resolutions[rng.choice(len(self.resolutions), p=self.resolution_probs)]
        size = closest_size(height, width, self.sizes[resolution])
        if num_frames == 1:
            return BucketPlan(size, center_crop_box(height, width, size), np.zeros(1, dtype=np.int64))
        count = choose_frame_count(num_frames, self.frame_counts, self.frame_probs, rng, self.stride)
        window = window_indices(num_frames, count, self.stride, rng if self.random_window else None)
        return BucketPlan(size, center_crop_box(height, width, size), window)

    def plan_fixed(self, height: int, width: int, num_frames: int, whole_clip: bool = False) -> BucketPlan:
        """Evaluation: first resolution's closest size, largest frame count that fits (or the whole clip's 1 + 4k), window from frame 0."""
        size = closest_size(height, width, self.sizes[self.resolutions[0]])
        counts = () if whole_clip else self.frame_counts
        count = 1 if num_frames == 1 else fallback_frame_count(num_frames, counts, self.stride)
        return BucketPlan(size, center_crop_box(height, width, size), window_indices(num_frames, count, self.stride))


@dataclass(frozen=True)
class ImageGroups:
    """One-to-All's image groups: the images split into K / ratio groups by aspect bucket (K = video samples).

    An image draw picks a group uniformly, then an image of it. Images of one aspect bucket
    form ``count // group_size`` groups (at least one), ``group_size = images // (K / ratio)``,
    so a group is about ``group_size`` images of one bucket, as the official
    ``prepare_training_data.py`` builds them; a bucket with fewer images than a group is one
    smaller group of its own (the official code drops those images). ``counts``: images per
    aspect bucket (height, width).
    """

    counts: Mapping[Size, int]
    groups: Mapping[Size, int]

    @classmethod
    def partition(cls, counts: Mapping[Size, int], num_videos: int, ratio: float = 6.0) -> ImageGroups:
        """Groups of ``counts`` images per aspect bucket for ``num_videos`` videos at ``ratio`` videos per image."""
        counts = {size: int(count) for size, count in counts.items() if count > 0}
        if not counts:
            raise ValueError("no images to group")
        if ratio <= 0:
            raise ValueError(f"video:image ratio must be > 0, got {ratio}")
        num_groups = max(1, int(num_videos / ratio))
        group_size = max(1, sum(counts.values()) // num_groups)
        return cls(counts, {size: max(1, count // group_size) for size, count in counts.items()})

    @property
    def num_groups(self) -> int:
        """Number of groups, K / ratio up to rounding per bucket."""
        return sum(self.groups.values())

    def image_probability(self, size: Size) -> float:
        """Probability that a draw yields one given image of aspect bucket ``size``: (its groups / all groups) / its images."""
        return self.groups[size] / self.num_groups / self.counts[size]

    def acceptance(self, size: Size) -> float:
        """Rejection-sampling acceptance of an image of bucket ``size`` drawn uniformly from all images."""
        return self.image_probability(size) / max(self.image_probability(other) for other in self.counts)


class GroupedImageDraw:
    """Pipeline stage: turn a uniform stream of images into group-then-image draws of :class:`ImageGroups`.

    Each image is kept with its bucket's acceptance probability, so a kept image is distributed
    exactly as "a group uniformly, then an image of it", without random access into the shards.
    ``size_of(sample)`` gives the image's aspect bucket, or None (unknown: passed through, counted
    in ``ungrouped``). With groups of equal size every image is kept.
    """

    def __init__(self, groups: ImageGroups, size_of: Callable[[Any], Size | None], seed: int = 0, rank: int = 0):
        self.groups, self.size_of = groups, size_of
        self.seed, self.rank = seed, rank
        self.epoch = -1
        self.kept = self.rejected = self.ungrouped = 0

    def __call__(self, samples: Iterable[Any]) -> Iterator[Any]:
        """Keep each sample with its group acceptance probability."""
        self.epoch += 1
        rng = worker_rng(self.seed, self.rank, self.epoch, 0x677270)
        for sample in samples:
            size = self.size_of(sample)
            if size is None or size not in self.groups.counts:
                self.ungrouped += 1
            elif rng.random() >= self.groups.acceptance(size):
                self.rejected += 1
                continue
            self.kept += 1
            yield sample


def worker_id() -> tuple[int, int]:
    """(worker, num_workers) of the current DataLoader worker; (0, 1) in the main process."""
    info = torch.utils.data.get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


def worker_rng(seed: int, rank: int, *salt: int) -> np.random.Generator:
    """A generator seeded by (seed, rank, dataloader worker, *salt): deterministic and distinct per stream.

    ``rank`` is read in the main process when the pipeline is built: torch.distributed is not
    initialised inside DataLoader workers.
    """
    return np.random.default_rng([seed, rank, worker_id()[0], *salt])


class RatioMix(IterableDataset):
    """Interleave sources at fixed weights (e.g. videos:images = 6:1), like ``wds.RandomMix`` but seeded.

    ``wds.RandomMix`` draws from the global ``random``; this draws from :func:`worker_rng`, so the
    mix is reproducible per seed, rank, worker and epoch. Stops when the drawn source is exhausted.
    """

    def __init__(self, sources: Sequence[Iterable], weights: Sequence[float], seed: int = 0, rank: int = 0):
        if len(sources) != len(weights):
            raise ValueError(f"{len(sources)} sources for {len(weights)} weights")
        self.sources = list(sources)
        self.probs = normalized_probs(weights, "mix weights")
        self.seed, self.rank = seed, rank
        self.epoch = -1

    def __iter__(self) -> Iterator:
        """Yield from a source drawn by weight until the drawn source runs out."""
        self.epoch += 1
        rng = worker_rng(self.seed, self.rank, self.epoch, 0x6D6978)
        iterators = [iter(source) for source in self.sources]
        while True:
            try:
                yield next(iterators[rng.choice(len(iterators), p=self.probs)])
            except StopIteration:
                return


def collate_samples(samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Stack tensors and numbers across samples; keep anything else as a list."""
    batch = {}
    for name in samples[0]:
        values = [sample[name] for sample in samples]
        if isinstance(values[0], torch.Tensor):
            batch[name] = torch.stack(values)
        elif isinstance(values[0], (bool, int, float, np.bool_, np.number)):
            batch[name] = torch.tensor(values)
        else:
            batch[name] = values
    return batch


def video_shape_key(sample: Mapping[str, Any]) -> tuple[int, ...]:
    """Bucket key of a prepared sample: the shape of its ``video`` tensor (C, T, H, W)."""
    return tuple(sample["video"].shape)


class BucketBatcher:
    """Pipeline stage: group samples by bucket key and emit collated batches of ``batch_size``.

    At most ``max_pending`` samples wait in unfilled buckets (default 4 x batch_size); past that
    the fullest bucket is emitted as a smaller batch. At the end of the stream the leftovers are
    emitted (fullest first) when ``partial``, else dropped.
    """

    def __init__(self, batch_size: int, max_pending: int | None = None, partial: bool = False,
                 collate_fn: Callable[[list], Any] = collate_samples,
                 key_fn: Callable[[Mapping[str, Any]], Any] = video_shape_key):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.max_pending = 4 * batch_size if max_pending is None else max_pending
        if self.max_pending < batch_size:
            raise ValueError(f"max_pending ({self.max_pending}) is smaller than batch_size ({batch_size})")
        self.partial = partial
        self.collate_fn = collate_fn
        self.key_fn = key_fn

    def __call__(self, samples: Iterable[Mapping[str, Any]]) -> Iterator[Any]:
        """Batch a stream of samples."""
        pending: dict[Any, list] = {}
        count = 0
        for sample in samples:
            key = self.key_fn(sample)
            bucket = pending.setdefault(key, [])
            bucket.append(sample)
            count += 1
            if len(bucket) == self.batch_size:
                count -= len(bucket)
                yield self.collate_fn(pending.pop(key))
            elif count > self.max_pending:
                fullest = max(pending, key=lambda key: len(pending[key]))
                count -= len(pending[fullest])
                yield self.collate_fn(pending.pop(fullest))
        if self.partial:
            for key in sorted(pending, key=lambda key: -len(pending[key])):
                yield self.collate_fn(pending[key])
