"""Evaluation of generated clips against ground truth: per clip and overall, at several horizons.

Clips come from folders on disk (:func:`run_evaluation`; a trained run's held-out clips are first
written there by ``trainer.predict``, see experiments/prediction.py); every source feeds
:class:`Clip` objects into :func:`evaluate_clips`, the one scoring and reporting path. A horizon is the first ``seconds * fps`` frames of every clip (EverAnimate's 10/30/60/90 s at
25 fps); ``full`` is the whole clip and is always reported. Each horizon has its own
:class:`MetricSuite` (the feature networks are loaded once and shared). Clips shorter than a
horizon are left out of it and counted. Results go to ``per_clip.csv``, ``summary.json`` and
``summary.csv`` in the run directory; :func:`log_report` sends them to a Lightning logger.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from common.files import atomic_write_text
from metrics.drift import DriftCurves, line_chart
from metrics.media import ClipPair, pair_clips, read_clip, read_keypoints, read_person_mask, read_plate, sidecar
from metrics.suite import MetricSuite
from metrics.video import frame_ranges, resize_frames, to_uint8

log = logging.getLogger(__name__)

SIZE_POLICIES = ("error", "resize")
LENGTH_POLICIES = ("truncate", "error")


@dataclass(frozen=True)
class Horizon:
    """A report horizon: the first ``frames`` frames of each clip (``None`` = the whole clip)."""

    name: str
    frames: int | None


def horizons(seconds: Sequence[float], fps: float) -> list[Horizon]:
    """``full`` plus one horizon per duration in seconds."""
    return [Horizon("full", None)] + [Horizon(f"{s:g}s", round(s * fps)) for s in seconds]


@dataclass(frozen=True)
class Clip:
    """An aligned pair: uint8 ``(3, T, H, W)`` videos and the target's optional extras."""

    name: str
    generated: torch.Tensor
    target: torch.Tensor
    keypoints: torch.Tensor | None = None  # (T, 133, 3) pixels of the target frames
    person_mask: torch.Tensor | None = None  # (T, H, W) bool
    plate: torch.Tensor | None = None  # (3, H, W) uint8: the scene without the person

    @property
    def frames(self) -> int:
        """Frame count T."""
        return self.target.shape[1]

    def prefix(self, frames: int) -> Clip:
        """The first ``frames`` frames (views, no copy)."""
        return self.window(0, frames)

    def window(self, start: int, stop: int) -> Clip:
        """Frames ``start:stop`` (views, no copy)."""
        return replace(
            self,
            generated=self.generated[:, start:stop],
            target=self.target[:, start:stop],
            keypoints=None if self.keypoints is None else self.keypoints[start:stop],
            person_mask=None if self.person_mask is None else self.person_mask[start:stop],
        )


def resize_clip(clip: torch.Tensor, size: tuple[int, int], chunk: int = 32) -> torch.Tensor:
    """Resize a uint8 ``(3, T, H, W)`` clip to ``size`` (bicubic, antialiased), ``chunk`` frames at a time."""
    out = torch.empty((3, clip.shape[1], *size), dtype=torch.uint8)
    for start, stop in frame_ranges(clip.shape[1], chunk):
        frames = clip[:, start:stop].transpose(0, 1).float() / 255.0  # (t, 3, H, W)
        out[:, start:stop] = to_uint8(resize_frames(frames, size, "bicubic", antialias=True)).transpose(0, 1)
    return out


def align(
    name: str, generated: torch.Tensor, target: torch.Tensor, on_size_mismatch: str, on_length_mismatch: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Make a pair the same size and length, or refuse, as the policies say."""
    if generated.shape[2:] != target.shape[2:]:
        message = f"{name}: generated frames are {tuple(generated.shape[2:])}, ground truth {tuple(target.shape[2:])}"
        if on_size_mismatch == "error":
            raise ValueError(message + " (set on_size_mismatch=resize to resize the generated frames)")
        log.warning("%s: resizing the generated frames", message)
        generated = resize_clip(generated, tuple(target.shape[2:]))
    if generated.shape[1] != target.shape[1]:
        message = f"{name}: generated has {generated.shape[1]} frames, ground truth {target.shape[1]}"
        if on_length_mismatch == "error":
            raise ValueError(message + " (set on_length_mismatch=truncate to compare the common frames)")
        frames = min(generated.shape[1], target.shape[1])
        log.warning("%s: comparing the first %d", message, frames)
        generated, target = generated[:, :frames], target[:, :frames]
    return generated, target


SIDECARS = {"keypoints": ".pose.npy", "person_mask": ".mask.npy", "plate": ".plate.npy"}  # annotation -> file suffix


def load_clip(pair: ClipPair, needs: Iterable[str], on_size_mismatch: str, on_length_mismatch: str) -> Clip:
    """Read, align and attach the sidecars of the annotations the suite ``needs``."""
    target = read_clip(pair.target)
    frames, height, width = target.shape[1:]
    keypoints = read_keypoints(pair.target, frames) if "keypoints" in needs else None
    person_mask = read_person_mask(pair.target, frames, height, width) if "person_mask" in needs else None
    plate = read_plate(pair.target, height, width) if "plate" in needs else None
    generated, target = align(pair.name, read_clip(pair.generated), target, on_size_mismatch, on_length_mismatch)
    clip = Clip(pair.name, generated, target, keypoints, person_mask, plate)
    return clip.prefix(clip.frames)  # trims the sidecars to the aligned length


class Evaluation:
    """Per-horizon suites fed one clip at a time; keeps the per-clip rows."""

    def __init__(self, metrics_cfg: Mapping | DictConfig, report_horizons: Sequence[Horizon], device: torch.device):
        self.horizons = list(report_horizons)
        self.suites = {h.name: MetricSuite.from_config(metrics_cfg).to(device) for h in self.horizons}
        self.rows: list[dict] = []
        self.too_short: Counter[str] = Counter()
        self.clips: Counter[str] = Counter()

    @property
    def suite(self) -> MetricSuite:
        """The whole-clip suite (all suites share one configuration)."""
        return self.suites["full"]

    def add(self, clip: Clip) -> None:
        """Evaluate one clip at every horizon it reaches."""
        for annotation, metrics in self.suite.needs.items():
            if getattr(clip, annotation) is None:
                raise ValueError(f"{clip.name}: {', '.join(metrics)} need(s) the ground truth's {annotation}, and this clip's data has none")
        for horizon in self.horizons:
            frames = clip.frames if horizon.frames is None else horizon.frames
            if clip.frames < frames:
                self.too_short[horizon.name] += 1
                continue
            part = clip.prefix(frames)
            per_clip = self.suites[horizon.name].update(
                part.generated[None],
                part.target[None],
                None if part.keypoints is None else part.keypoints[None],
                None if part.person_mask is None else part.person_mask[None],
                None if part.plate is None else part.plate[None],
            )
            self.clips[horizon.name] += 1
            values = {name: float(v[0]) for name, v in per_clip.items()}
            self.rows.append({"clip": clip.name, "horizon": horizon.name, "frames": frames, **values})

    def summary(self) -> dict[str, dict[str, float]]:
        """``{horizon: {clips, clips_too_short, <metrics>}}``; metrics only where a clip was evaluated."""
        summary = {}
        for horizon in self.horizons:
            counts = {"clips": self.clips[horizon.name], "clips_too_short": self.too_short[horizon.name]}
            metrics = self.suites[horizon.name].compute() if counts["clips"] else {}
            summary[horizon.name] = {**counts, **metrics}
        return summary


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; anything else as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def check_choice(key: str, value: str, choices: Sequence[str]) -> None:
    """Raise unless a config value is one of its choices."""
    if value not in choices:
        raise ValueError(f"{key} must be one of {', '.join(choices)}; got {value!r}")


def check_sidecars(pairs: Sequence[ClipPair], needs: Iterable[str]) -> None:
    """Raise before any work if a needed ``NAME.pose.npy`` / ``NAME.mask.npy`` / ``NAME.plate.npy`` is missing."""
    suffixes = [SIDECARS[name] for name in needs]
    missing = [path for pair in pairs for suffix in suffixes if not (path := sidecar(pair.target, suffix)).is_file()]
    if missing:
        shown = ", ".join(str(path) for path in missing[:3]) + (", ..." if len(missing) > 3 else "")
        raise FileNotFoundError(f"{len(missing)} ground-truth sidecar file(s) needed by the metrics are missing: {shown}")


ClipSource = Callable[[MetricSuite], Iterable[Clip]]  # the clips to score, given the suite (what it needs)


def evaluate_clips(
    cfg: DictConfig, out_dir: Path, clips: ClipSource, inputs: Mapping[str, Any], total: int | None = None
) -> tuple[list[dict], dict[str, dict[str, float]]]:
    """Score clips at every horizon, write the reports and return them: the path every mode shares.

    ``cfg`` holds ``metrics``, ``horizons_s``, ``fps`` and ``device``; ``clips(suite)`` yields the
    clips (it may first check that it can give the annotations ``suite.needs``); ``inputs`` says where they came from (summary.json).
    Returns the per-clip rows and the summary ``{horizon: {clips, clips_too_short, <metrics>}}``.
    """
    evaluation = Evaluation(cfg.metrics, horizons(cfg.horizons_s, cfg.fps), resolve_device(cfg.device))
    drift_frames = cfg.get("drift_frames")
    drift = DriftCurves(cfg.metrics, int(drift_frames), cfg.fps, resolve_device(cfg.device)) if drift_frames else None
    longest = 0
    for clip in tqdm(clips(evaluation.suite), total=total, desc="evaluate", unit="clip"):
        evaluation.add(clip)
        longest = max(longest, clip.frames)
        if drift is not None:
            drift.add(clip)
    summary = evaluation.summary()
    write_reports(out_dir, evaluation.rows, summary, cfg, inputs)
    for horizon, values in summary.items():
        if values["clips_too_short"]:
            log.warning("horizon %s is longer than %d of the clips (the longest has %d frames, %.3g s at fps %g): they are left out of it",
                        horizon, values["clips_too_short"], longest, longest / cfg.fps, cfg.fps)
        log.info("%s: %s", horizon, ", ".join(f"{k}={v:.4g}" for k, v in values.items()))
    if drift is not None:
        write_drift(out_dir, drift.rows(), list(cfg.metrics.names))
    return evaluation.rows, summary


def write_drift(out_dir: Path, rows: list[dict], names: Sequence[str]) -> None:
    """``drift.csv`` (one row per window) and ``drift.png`` (each metric along the video)."""
    if not rows:
        log.warning("no clip is as long as one drift window: no drift curves")
        return
    write_csv(out_dir / "drift.csv", rows)
    xs = [row["start_s"] for row in rows]
    line_chart(out_dir / "drift.png", xs, {name: [row.get(name) for row in rows] for name in names if name in rows[0]},
               "seconds into the video", f"drift: each metric per window of {rows[0]['stop_frame']} frames")
    log.info("drift curves over %d windows in %s", len(rows), out_dir / "drift.csv")


def run_evaluation(cfg: DictConfig, out_dir: Path, provenance: Mapping[str, Any] | None = None) -> tuple[list[dict], dict[str, dict[str, float]]]:
    """Evaluate ``cfg.generated`` against ``cfg.target`` (folders or single clips); write and return the reports.

    ``provenance`` (where the clips came from: a checkpoint, its sampler) goes into summary.json.
    Returns the per-clip rows and the summary ``{horizon: {clips, clips_too_short, <metrics>}}``.
    """
    check_choice("on_size_mismatch", cfg.on_size_mismatch, SIZE_POLICIES)
    check_choice("on_length_mismatch", cfg.on_length_mismatch, LENGTH_POLICIES)
    pairs = pair_clips(Path(cfg.generated), Path(cfg.target))

    def clips(suite: MetricSuite) -> Iterable[Clip]:
        check_sidecars(pairs, suite.needs)
        for pair in pairs:
            yield load_clip(pair, suite.needs, cfg.on_size_mismatch, cfg.on_length_mismatch)

    log.info("evaluating %d clip(s) with %s", len(pairs), ", ".join(cfg.metrics.names))
    inputs = {"generated": str(cfg.generated), "target": str(cfg.target), **(provenance or {})}
    return evaluate_clips(cfg, out_dir, clips, inputs, total=len(pairs))


def json_safe(value: float) -> float | None:
    """NaN/inf -> None (strict JSON has no NaN)."""
    return value if math.isfinite(value) else None


def row_columns(rows: Iterable[Mapping]) -> list[str]:
    """The keys of rows with possibly different keys, in first-seen order."""
    return list(dict.fromkeys(key for row in rows for key in row))


def write_csv(path: Path, rows: Iterable[Mapping]) -> None:
    """Rows as one CSV; a row lacking a column leaves it empty."""
    rows = list(rows)
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=row_columns(rows))
        writer.writeheader()
        writer.writerows(rows)


def protocol_of(metrics_cfg: Mapping) -> str:
    """``NAME vVERSION`` of a metrics config (conf/metrics presets; ``unnamed v0`` for a hand-made one), recorded beside its numbers."""
    return f"{metrics_cfg.get('protocol', 'unnamed')} v{metrics_cfg.get('protocol_version', 0)}"


def write_reports(
    out_dir: Path, rows: list[dict], summary: dict[str, dict[str, float]], cfg: DictConfig, inputs: Mapping[str, Any]
) -> None:
    """``per_clip.csv``, ``summary.csv`` and ``summary.json`` (with the inputs and metric config)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_csv(out_dir / "per_clip.csv", rows)
    write_csv(out_dir / "summary.csv", ({"horizon": h, **values} for h, values in summary.items()))
    report = {
        **inputs,
        "protocol": protocol_of(cfg.metrics),
        "fps": cfg.fps,
        "metrics": OmegaConf.to_container(cfg.metrics, resolve=True),
        "summary": {h: {k: json_safe(v) for k, v in values.items()} for h, values in summary.items()},
    }
    atomic_write_text(out_dir / "summary.json", json.dumps(report, indent=2))


def log_report(logger, rows: list[dict], summary: dict[str, dict[str, float]]) -> None:
    """Log the summary as ``eval/<horizon>/<name>`` to a Lightning logger, and the per-clip table to W&B."""
    logger.log_metrics({f"eval/{h}/{name}": value for h, values in summary.items() for name, value in values.items()})
    if hasattr(logger, "log_table"):
        columns = row_columns(rows)
        logger.log_table("eval/per_clip", columns=columns, data=[[row.get(c) for c in columns] for row in rows])
    logger.finalize("success")
