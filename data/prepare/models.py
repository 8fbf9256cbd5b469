"""The models a run annotates with: the pose model, the OCR detector and keypoint tables, held by one object per run."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from data.pose_import import read_deepfashion_annotations
from data.prepare.config import PrepareConfig

TextDetector = Callable[[np.ndarray], list[list[float]]]  # rgb frame -> [x0, y0, x1, y1] boxes


class Models:
    """The pose model, the text detector and DeepFashion keypoint tables, each loaded on first use.

    One object per run goes to every worker process (pickled), where each loads its own copies.
    ``pose`` / ``ocr``: ready-made ones to use instead (anything with DWPose's ``video`` method /
    a :data:`TextDetector`), picklable when ``workers`` > 1.
    """

    def __init__(self, config: PrepareConfig, pose: Any = None, ocr: TextDetector | None = None):
        self.config = config
        self._pose, self._ocr = pose, ocr
        self._tables: dict[str, dict] = {}

    def check(self) -> None:
        """Fail now, not once per source, when the configured pose model or OCR package is missing."""
        if self.config.pose == "dwpose" and self._pose is None:
            import onnxruntime  # noqa: F401 - a missing package fails here

            from common.pose.dwpose import model_paths

            model_paths(self.config.dwpose_dir)  # a missing model fails here, naming the file
        if self.config.text == "ocr" and self._ocr is None:
            ocr_detector()

    def pose(self) -> Any:
        """The DWPose extractor (one inference thread per worker when there are several workers)."""
        if self._pose is None:
            from common.pose.dwpose import DWPose

            threads = 1 if self.config.workers > 1 else 0
            self._pose = DWPose(self.config.dwpose_dir, threads=threads, keypoint_threshold=self.config.keypoint_threshold)
        return self._pose

    def ocr(self) -> TextDetector:
        """The text detector of the installed OCR package."""
        if self._ocr is None:
            self._ocr = ocr_detector()
        return self._ocr

    def keypoint_table(self, path: str) -> dict:
        """Image name -> keypoints ``(133, 3)`` of a DeepFashion annotation file."""
        if path not in self._tables:
            self._tables[path] = read_deepfashion_annotations(path)
        return self._tables[path]


def ocr_detector() -> TextDetector:
    """A text detector from an installed OCR package (rapidocr_onnxruntime, then easyocr): rgb frame -> [x0, y0, x1, y1] boxes."""
    try:
        from rapidocr_onnxruntime import RapidOCR

        engine = RapidOCR()

        def detect(frame: np.ndarray) -> list[list[float]]:
            """Boxes of RapidOCR's quadrilaterals."""
            result, _ = engine(frame)
            return [_quad_box(item[0]) for item in (result or [])]

        return detect
    except ImportError:
        pass
    try:
        import easyocr

        reader = easyocr.Reader(["en"], gpu=False, verbose=False)
        return lambda frame: [_quad_box(item[0]) for item in reader.readtext(frame)]
    except ImportError as exn:
        raise ImportError("text=ocr needs an OCR package: pip install rapidocr_onnxruntime (or easyocr); or use text=sidecar / none") from exn


def _quad_box(quad: Any) -> list[float]:
    """Four corner points -> [x0, y0, x1, y1]."""
    points = np.asarray(quad, dtype=np.float64).reshape(-1, 2)
    return [float(points[:, 0].min()), float(points[:, 1].min()), float(points[:, 0].max()), float(points[:, 1].max())]
