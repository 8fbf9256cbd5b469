"""Settings of ``python -m data.prepare``, the reasons it skips input for, and the names of its output files."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from omegaconf import MISSING

from data.processes import check_start_method

GENERATOR_NAME = "data.prepare"
GENERATOR_VERSION = 1
STATE_NAME = "prepare_state.json"
REPORT_NAME = "prepare_report.json"
SPLITS = ("train", "val", "test")
REASONS = {
    "empty_file": "the file has zero bytes",
    "unreadable_video": "PyAV cannot open or decode it",
    "no_frames": "it decodes to no frames",
    "corrupt_frames": "decoding stopped on a broken frame, or a frame image does not load",
    "inconsistent_size": "frames change size inside the video",
    "variable_frame_rate": "frame intervals vary and no target fps was given to resample by timestamp",
    "low_frame_rate": "the source has fewer frames per second than the target fps",
    "too_small": "the frames are smaller than min_size",
    "too_short": "fewer frames than min_frames after resampling",
    "no_keypoints": "no keypoint sidecar file was found",
    "keypoint_mismatch": "the keypoint file does not read or does not fit the video (frames, size, layout)",
    "no_person": "too few frames with a visible person (clip or image)",
    "bad_text_boxes": "the text-box sidecar does not parse",
    "missing_image": "an image named in the pairs file does not exist",
    "unreadable_image": "an image does not load",
    "bad_pair": "a line of the pairs file cannot be parsed",
    "pose_model_error": "the pose model failed on this source",
}


@dataclass
class PrepareConfig:
    """Settings of ``python -m data.prepare`` (``key=value`` on the command line, defaults in conf/prepare.yaml)."""

    out: str = MISSING
    videos: str | None = None  # folder of videos / frame folders
    images: str | None = None  # folder of images for pose-transfer pairs
    pairs: str | None = None  # pairs file (csv with from,to columns, or "a b" / "a,b" lines), relative to images
    pairs_split: str | None = None  # put every pair in this split (DeepFashion ships train/test pair lists)
    image_keypoints: str | None = None  # DeepFashion annotation csv (name:keypoints_y:keypoints_x)
    poses: str | None = None  # sidecar keypoints in a parallel tree instead of beside the media
    pose: str = "sidecar"  # sidecar | dwpose
    dwpose_dir: str = "models/dwpose"  # yolox_l.onnx and dw-ll_ucoco_384.onnx
    smooth: int = 0  # DWPose: moving-average window over time (frames); 0/1 = off
    keypoint_threshold: float = 0.3  # confidence of a visible point
    fps: float | None = None  # target frame rate; null keeps the source rate
    frame_fps: float = 30.0  # frame rate of folders of frames
    clip_frames: int = 33
    clip_stride: int | None = None  # frames between clip starts; null = clip_frames (no overlap)
    min_frames: int | None = None  # a shorter video becomes one clip if it has at least this many; null = clip_frames
    max_clips: int | None = None  # per video
    size: int | None = None  # short side in pixels; null keeps the source size (odd sides lose a row/column)
    min_size: int = 32
    min_person_fraction: float = 0.5  # of a clip's frames showing a person
    min_body_points: int = 4  # visible body points that make a frame "show a person"
    text: str = "sidecar"  # sidecar | ocr | none
    ocr_stride: int = 4  # text=ocr: detect every this many frames, boxes hold until the next detection
    split: str = "auto"  # auto | folders | hash
    val_fraction: float = 0.05
    test_fraction: float = 0.05
    identity: str = "file"  # file | folder
    workers: int = 1
    multiprocessing_context: str = "forkserver"  # how workers start: forkserver | spawn | fork (data.processes: fork can deadlock)
    samples_per_shard: int = 64
    overwrite: bool = False  # delete what an earlier run wrote and start over
    retry_skipped: bool = False  # process again sources an earlier run skipped
    progress: bool = True

    def check(self) -> None:
        """Raise ValueError for settings that cannot work, naming the key."""
        choices = {"pose": ("sidecar", "dwpose"), "text": ("sidecar", "ocr", "none"), "split": ("auto", "folders", "hash"), "identity": ("file", "folder")}
        for key, valid in choices.items():
            if getattr(self, key) not in valid:
                raise ValueError(f"{key}={getattr(self, key)!r} is not one of {', '.join(valid)}")
        if self.videos is None and self.images is None:
            raise ValueError("give videos=DIR and/or images=DIR (with pairs=FILE)")
        if self.images is not None and self.pairs is None:
            raise ValueError("images=DIR needs pairs=FILE (the pose-transfer pairs list)")
        if self.clip_frames < 1 or (self.clip_stride is not None and self.clip_stride < 1):
            raise ValueError(f"clip_frames and clip_stride must be positive, got {self.clip_frames}, {self.clip_stride}")
        if self.fps is not None and self.fps <= 0 or self.frame_fps <= 0:
            raise ValueError(f"fps and frame_fps must be positive, got {self.fps}, {self.frame_fps}")
        if self.size is not None and self.size < self.min_size:
            raise ValueError(f"size={self.size} is below min_size={self.min_size}")
        if not (0 <= self.val_fraction and 0 <= self.test_fraction and self.val_fraction + self.test_fraction < 1):
            raise ValueError("val_fraction and test_fraction must be >= 0 and sum to less than 1")
        if self.pairs_split is not None and self.pairs_split not in SPLITS:
            raise ValueError(f"pairs_split={self.pairs_split!r} is not one of {', '.join(SPLITS)}")
        if self.workers < 1 or self.samples_per_shard < 1:
            raise ValueError("workers and samples_per_shard must be at least 1")
        check_start_method("multiprocessing_context", self.multiprocessing_context)

    def settings(self) -> dict:
        """The settings that change the output (an earlier run with other settings needs overwrite=true)."""
        skip = {"out", "workers", "multiprocessing_context", "overwrite", "retry_skipped", "progress"}
        return {key: value for key, value in asdict(self).items() if key not in skip}


class SkipSource(Exception):
    """A source (or clip, or pair) that is skipped: ``reason`` (a key of :data:`REASONS`) and a detail."""

    def __init__(self, reason: str, detail: str = ""):
        if reason not in REASONS:
            raise ValueError(f"unknown skip reason {reason!r}")
        super().__init__(reason, detail)
        self.reason, self.detail = reason, detail
