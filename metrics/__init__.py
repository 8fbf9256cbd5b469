"""Evaluation metrics of the four papers as torchmetrics ``Metric`` classes, and a suite built from config.

PSNR, SSIM, masked PSNR and F-PSNR need no weight files; LPIPS, FID, FID-VID, FVD and V-MAE load
their feature networks from local files (docs/METRICS.md says which file goes where).
"""

from metrics.frechet import FID, FIDVID, FVD, frechet_distance
from metrics.perceptual import LPIPS
from metrics.pixel import PSNR, SSIM, FacePSNR, MaskedPSNR
from metrics.suite import METRICS, MetricSuite
from metrics.vmae import VMAE
from metrics.weights import MissingWeightsError

__all__ = [
    "FID",
    "FIDVID",
    "FVD",
    "LPIPS",
    "METRICS",
    "PSNR",
    "SSIM",
    "VMAE",
    "FacePSNR",
    "MaskedPSNR",
    "MetricSuite",
    "MissingWeightsError",
    "frechet_distance",
]
