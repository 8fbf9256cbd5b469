"""The supersampled person canvas: parts pasted back to front with solid or patterned fills, exact coverage."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SUPERSAMPLE = 2


def darker(color: tuple, factor: float = 0.55) -> tuple:
    """A darker shade of ``color`` (outlines, shading)."""
    return tuple(int(c * factor) for c in color)


@dataclass
class Fill:
    """A part's fill: a solid colour, or a cloth texture (stripes, dots, checks) laid out in a local frame (origin, angle, unit)."""

    color: tuple
    cloth: dict | None = None
    origin: np.ndarray | None = None
    angle: float = 0.0
    unit: float = 1.0


class Canvas:
    """Supersampled person layer: colour on black plus coverage; parts are pasted back to front."""

    def __init__(self, height: int, width: int, supersample: int = SUPERSAMPLE, outlines: bool = True):
        """Black, empty canvases ``supersample`` times the output size; ``outlines``: darken each part's rim."""
        self.ss = supersample
        self.outlines = outlines
        self.size = (width * supersample, height * supersample)
        self.rgb = Image.new("RGB", self.size)
        self.alpha = Image.new("L", self.size)
        self.draw = ImageDraw.Draw(self.rgb)

    def scaled(self, points: np.ndarray) -> list[tuple[float, float]]:
        """Output-pixel points ``(N, 2)`` -> supersampled PIL coordinates."""
        return [tuple(p) for p in (np.asarray(points) * self.ss).tolist()]

    def _mask(self, shapes: list) -> tuple[tuple[int, int, int, int], Image.Image] | None:
        """Rasterise shapes into a mask over their (clipped) bounding box."""
        polygons = [np.asarray(data) * self.ss for kind, data in shapes if kind == "polygon"]
        discs = np.array([(*(data[0] * self.ss), max(data[1] * self.ss, 1.0)) for kind, data in shapes if kind == "disc"]).reshape(-1, 3)
        corners = np.concatenate(polygons + [discs[:, :2] - discs[:, 2:], discs[:, :2] + discs[:, 2:]])
        x0, y0 = np.maximum(np.floor(corners.min(axis=0)).astype(int) - 2, 0)
        x1, y1 = np.minimum(np.ceil(corners.max(axis=0)).astype(int) + 2, self.size)
        if x1 <= x0 or y1 <= y0:
            return None
        mask = Image.new("L", (x1 - x0, y1 - y0))
        draw = ImageDraw.Draw(mask)
        offset = np.array([x0, y0])
        for polygon in polygons:
            draw.polygon((polygon - offset).ravel().tolist(), fill=255)
        for cx, cy, r in (discs - [x0, y0, 0]).tolist():
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
        return (int(x0), int(y0), int(x1), int(y1)), mask

    def _pattern(self, fill: Fill, box: tuple[int, int, int, int]) -> Image.Image:
        """The fill's cloth pattern over ``box`` (supersampled pixels)."""
        x0, y0, x1, y1 = box
        rel_x = (((np.arange(x0, x1, dtype=np.float32) + 0.5) / self.ss - fill.origin[0]) / fill.unit)[None, :]  # (1, w)
        rel_y = (((np.arange(y0, y1, dtype=np.float32) + 0.5) / self.ss - fill.origin[1]) / fill.unit)[:, None]  # (h, 1)
        angle = fill.angle + fill.cloth["angle"]
        period, pattern = fill.cloth["period"], fill.cloth["pattern"]
        a = (rel_x * math.cos(angle) + rel_y * math.sin(angle)) / period  # (h, w)
        b = (rel_y * math.cos(angle) - rel_x * math.sin(angle)) / period
        if pattern == "stripes":
            on = b % 1.0 < 0.45
        elif pattern == "dots":
            on = (a % 1.0 - 0.5) ** 2 + (b % 1.0 - 0.5) ** 2 < 0.09
        else:
            on = (np.floor(a) + np.floor(b)) % 2 == 0
        pixels = np.where(on[..., None], np.array(fill.cloth["color2"], np.uint8), np.array(fill.color, np.uint8))
        return Image.fromarray(pixels)

    def paint(self, shapes: list, fill: Fill, outline: bool = True) -> tuple | None:
        """Paste one part (union of shapes) over everything so far; returns its (box, mask)."""
        rasterised = self._mask(shapes)
        if rasterised is None:
            return None
        box, mask = rasterised
        if fill.cloth is not None:
            self.rgb.paste(self._pattern(fill, box), box[:2], mask)
        else:
            self.rgb.paste(fill.color, box, mask)
        self.alpha.paste(255, box, mask)
        if outline and self.outlines:
            self.rgb.paste(darker(fill.color), box, mask.filter(ImageFilter.FIND_EDGES))  # the mask's inner rim
        return box, mask

    def covers(self, part: tuple | None, points: np.ndarray) -> np.ndarray:
        """Whether each output-pixel point ``(N, 2)`` falls on a painted part's mask."""
        if part is None:
            return np.zeros(len(points), dtype=bool)
        (x0, y0, x1, y1), mask = part
        pixels = np.floor(points * self.ss).astype(int) - np.array([x0, y0])
        inside = (pixels[:, 0] >= 0) & (pixels[:, 0] < x1 - x0) & (pixels[:, 1] >= 0) & (pixels[:, 1] < y1 - y0)
        hits = np.zeros(len(points), dtype=bool)
        array = np.asarray(mask)
        hits[inside] = array[pixels[inside, 1], pixels[inside, 0]] > 0
        return hits

    def composite(self, background: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Downsample and lay the person over ``background`` ``(H, W, 3)``: frame uint8 and mask bool."""
        person = np.asarray(self.rgb.reduce(self.ss), dtype=np.float32)
        coverage = np.asarray(self.alpha.reduce(self.ss), dtype=np.float32)[..., None] / 255.0
        frame = background.astype(np.float32) * (1.0 - coverage) + person
        return np.clip(np.rint(frame), 0, 255).astype(np.uint8), coverage[..., 0] > 0
