"""Drift curves: every metric per chunk along long videos, as a table and a line chart.

A long video is cut into consecutive windows of ``frames`` frames (one generation chunk each,
when the window is the rollout's chunk length); each window has its own :class:`MetricSuite`
that every clip long enough to reach it updates, so a row is that window's metric over all clips.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from common.video import write_png
from metrics.suite import MetricSuite

WINDOW_COLUMNS = ("window", "start_frame", "stop_frame", "start_s", "clips")  # a drift row's columns that are not metrics
COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75), (227, 119, 194)]


class DriftCurves:
    """Per-window suites along the clips: ``add(clip)``, then ``rows()``."""

    def __init__(self, metrics_cfg: Mapping, frames: int, fps: float, device):
        if frames < 1:
            raise ValueError(f"drift_frames={frames}: a window needs at least one frame")
        self.metrics_cfg, self.frames, self.fps, self.device = metrics_cfg, frames, fps, device
        self.suites: list[MetricSuite] = []
        self.clips: list[int] = []

    def add(self, clip) -> None:
        """Score each whole window of ``clip`` (a :class:`metrics.evaluation.Clip`); a last partial window is left out."""
        for index in range(clip.frames // self.frames):
            if index == len(self.suites):
                self.suites.append(MetricSuite.from_config(self.metrics_cfg).to(self.device))
                self.clips.append(0)
            start = index * self.frames
            part = clip.window(start, start + self.frames)
            self.suites[index].update(
                part.generated[None], part.target[None],
                None if part.keypoints is None else part.keypoints[None],
                None if part.person_mask is None else part.person_mask[None],
                None if part.plate is None else part.plate[None],
            )
            self.clips[index] += 1

    def rows(self) -> list[dict]:
        """One row per window: its frames, start time, clip count and metrics."""
        rows = []
        for index, suite in enumerate(self.suites):
            start = index * self.frames
            values = {name: float(value) for name, value in suite.compute().items()}
            rows.append({"window": index, "start_frame": start, "stop_frame": start + self.frames,
                         "start_s": round(start / self.fps, 3), "clips": self.clips[index], **values})
        return rows


def drift_of(rows: Sequence[Mapping], names: Sequence[str] | None = None, fraction: float = 0.25) -> dict[str, float]:
    """Each metric's change along the video: the mean over the last ``fraction`` of the windows minus the first's.

    Negative for a metric that falls as errors accumulate (PSNR, SSIM); 0 for a rollout that does not drift.
    ``rows`` are drift-curve rows (window order, e.g. read back from drift.csv); a video needs two windows.
    ``names``: the metrics to take; None = every column that is not one of :data:`WINDOW_COLUMNS`.
    """
    if not 0 < fraction <= 0.5:
        raise ValueError(f"fraction={fraction}: the first and last parts must not overlap (0 < fraction <= 0.5)")
    if len(rows) < 2:
        return {}
    if names is None:
        names = [name for name in rows[0] if name not in WINDOW_COLUMNS]
    part = max(1, int(len(rows) * fraction))
    first, last = rows[:part], rows[-part:]
    return {name: float(np.mean([float(r[name]) for r in last]) - np.mean([float(r[name]) for r in first]))
            for name in names if all(name in r for r in rows)}


def line_chart(path: str | Path, xs: Sequence[float], series: Mapping[str, Sequence[float]], x_label: str,
               title: str, shared_scale: bool = False, size: tuple[int, int] = (720, 420)) -> Path:
    """A PNG line chart of ``series`` (name -> values at ``xs``).

    ``shared_scale``: one y axis for all series (the same metric of several runs), with ticks;
    otherwise each series on its own min-max scale, its range in the legend (several metrics).
    """
    width, height = size
    left, right, top, bottom = 60, 20, 40, 50
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    draw.text((left, 12), title, fill="black")
    draw.rectangle([left, top, width - right, height - bottom], outline=(160, 160, 160))
    x0, x1 = (min(xs), max(xs)) if xs else (0.0, 1.0)
    span_x = (x1 - x0) or 1.0
    for tick in np.linspace(x0, x1, 6):
        x = left + (tick - x0) / span_x * (width - left - right)
        draw.line([x, height - bottom, x, height - bottom + 4], fill="black")
        draw.text((x - 10, height - bottom + 8), f"{tick:.3g}", fill="black")
    draw.text(((width - left) // 2, height - 18), x_label, fill="black")
    finite = [v for values in series.values() for v in values if v is not None and math.isfinite(v)]
    if shared_scale and finite:
        for tick in np.linspace(min(finite), max(finite), 5):
            y = height - bottom - (tick - min(finite)) / ((max(finite) - min(finite)) or 1.0) * (height - top - bottom - 10) - 5
            draw.line([left - 4, y, left, y], fill="black")
            draw.text((4, y - 6), f"{tick:.3g}", fill="black")
    for number, (name, values) in enumerate(series.items()):
        points = [(x, v) for x, v in zip(xs, values) if v is not None and math.isfinite(v)]
        if not points:
            continue
        low, high = (min(finite), max(finite)) if shared_scale else (min(v for _, v in points), max(v for _, v in points))
        span = (high - low) or 1.0
        colour = COLOURS[number % len(COLOURS)]
        pixels = [(left + (x - x0) / span_x * (width - left - right), height - bottom - (v - low) / span * (height - top - bottom - 10) - 5)
                  for x, v in points]
        if len(pixels) > 1:
            draw.line(pixels, fill=colour, width=2)
        for px, py in pixels:
            draw.ellipse([px - 2, py - 2, px + 2, py + 2], fill=colour)
        legend = name if shared_scale else f"{name}: {low:.3g} .. {high:.3g}"
        draw.text((left + 8, top + 6 + 14 * number), legend, fill=colour)
    return write_png(path, np.asarray(image))
