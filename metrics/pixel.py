"""Pixel metrics that need no weight files: PSNR, masked PSNR, F-PSNR (face PSNR), SSIM and masked SSIM."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from common.pose.faces import box_masks, face_boxes
from metrics.base import FrameMetric

PSNR_OF_IDENTICAL = 100.0  # dB given to a frame with zero error (DisCo's convention)


def psnr_from_mse(mse: torch.Tensor) -> torch.Tensor:
    """PSNR in dB for peak 1; zero error gives ``PSNR_OF_IDENTICAL``, NaN stays NaN."""
    return torch.where(mse == 0, torch.full_like(mse, PSNR_OF_IDENTICAL), -10.0 * torch.log10(mse))


def frame_psnr(generated: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """PSNR ``(N,)`` of each frame pair ``(N, 3, H, W)`` in [0, 1] (MSE over channels and pixels)."""
    mse = (generated - target).square().flatten(1).mean(dim=1, dtype=torch.float64)
    return psnr_from_mse(mse)


def masked_frame_psnr(generated: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """PSNR ``(N,)`` over the pixels where ``mask (N, H, W)`` is True; NaN for an empty mask."""
    weight = mask[:, None].to(torch.float64)  # (N, 1, H, W)
    squared_error = (generated - target).square().to(torch.float64) * weight
    count = weight.flatten(1).sum(dim=1) * generated.shape[1]
    mse = squared_error.flatten(1).sum(dim=1) / count  # NaN where count == 0
    return psnr_from_mse(mse)


class PSNR(FrameMetric):
    """PSNR per frame on [0, 1] with peak 1, averaged over each clip's frames, then over clips.

    Unlike torchmetrics' default ``PeakSignalNoiseRatio(dim=None)``, the MSE is never pooled over
    frames or clips before the logarithm.
    """

    name = "psnr"
    higher_is_better = True

    def frame_values(self, generated, target, annotations) -> torch.Tensor:
        """Per-frame PSNR."""
        return frame_psnr(generated, target)


class MaskedFrameMetric(FrameMetric):
    """A per-frame value over the pixels of the boolean person mask ``(B, T, H, W)``; frames with an empty mask are skipped."""

    needs = ("person_mask",)
    skip_keys = ("skipped_frames", "skipped_clips")
    higher_is_better = True

    @staticmethod
    def masked_value(generated: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Per-frame value ``(N,)`` inside ``mask (N, H, W)``, NaN for an empty mask."""
        raise NotImplementedError

    def frame_values(self, generated, target, annotations) -> torch.Tensor:
        """Per-frame value inside the mask."""
        return self.masked_value(generated, target, annotations.person_mask)


class MaskedPSNR(MaskedFrameMetric):
    """PSNR inside the person mask (:func:`masked_frame_psnr`)."""

    name = "psnr_mask"
    masked_value = staticmethod(masked_frame_psnr)


class BackgroundPSNR(MaskedFrameMetric):
    """PSNR outside the person mask: the static scene (EverAnimate's Finding 1: carry-over that degrades even static content)."""

    name = "psnr_background"

    def frame_values(self, generated, target, annotations) -> torch.Tensor:
        """Per-frame PSNR over the pixels outside the mask."""
        return masked_frame_psnr(generated, target, ~annotations.person_mask.bool())


class FacePSNR(FrameMetric):
    """F-PSNR: PSNR inside the face box of the ground-truth keypoints (see :mod:`common.pose.faces`).

    ``keypoints`` are the target's ``(B, T, 133, 3)`` COCO-WholeBody points in pixels of the frames
    given; the same box is cut from the generated frame. Frames without a valid face are skipped
    and counted in ``skipped_frames``.
    """

    name = "fpsnr"
    needs = ("keypoints",)
    skip_keys = ("skipped_frames", "skipped_clips")
    higher_is_better = True

    def __init__(self, min_confidence: float = 0.3, area_scale: float = 1.3, **kwargs) -> None:
        super().__init__(**kwargs)
        self.min_confidence = min_confidence
        self.area_scale = area_scale

    def frame_values(self, generated, target, annotations) -> torch.Tensor:
        """Per-frame PSNR inside the face box, NaN without a face."""
        keypoints = annotations.keypoints
        if keypoints.shape[-2:] != (133, 3):
            raise ValueError(f"fpsnr expects COCO-WholeBody keypoints (..., 133, 3), got {tuple(keypoints.shape)}")
        height, width = generated.shape[-2:]
        boxes, valid = face_boxes(keypoints, height, width, self.min_confidence, self.area_scale)
        masks = box_masks(boxes, height, width) & valid[:, None, None]
        return masked_frame_psnr(generated, target, masks)


def gaussian_kernel(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Normalised 1-D Gaussian ``(size,)`` float64, as scipy.ndimage builds it."""
    offsets = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return kernel / kernel.sum()


def ssim_map_from_moments(
    moments: torch.Tensor, channels: int, data_range: float, covariance_scale: float
) -> torch.Tensor:
    """SSIM map ``(N, C, h, w)`` from filtered ``[x, y, xx, yy, xy]`` stacked on channels ``(N, 5C, h, w)``."""
    mu_x, mu_y, xx, yy, xy = moments.split(channels, dim=1)
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    var_x = covariance_scale * (xx - mu_x * mu_x)
    var_y = covariance_scale * (yy - mu_y * mu_y)
    cov_xy = covariance_scale * (xy - mu_x * mu_y)
    numerator = (2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)
    denominator = (mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2)
    return numerator / denominator


def ssim_from_moments(
    moments: torch.Tensor, channels: int, data_range: float, covariance_scale: float
) -> torch.Tensor:
    """Mean SSIM ``(N,)`` from filtered ``[x, y, xx, yy, xy]`` stacked on channels ``(N, 5C, h, w)``."""
    return ssim_map_from_moments(moments, channels, data_range, covariance_scale).flatten(1).mean(dim=1)


def check_window(frames: torch.Tensor, window: int) -> None:
    """Raise if frames are smaller than the SSIM window."""
    if min(frames.shape[-2:]) < window:
        raise ValueError(f"SSIM needs frames of at least {window}x{window} pixels, got {tuple(frames.shape[-2:])}")


def ssim_gaussian_map(generated: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """SSIM map ``(N, 3, H - 10, W - 10)`` of :func:`ssim_gaussian` (the valid region: 5 pixels cropped per side)."""
    check_window(generated, 11)
    x, y = generated.double(), target.double()
    stacked = torch.cat([x, y, x * x, y * y, x * y], dim=1)  # (N, 15, H, W)
    kernel = gaussian_kernel().to(stacked.device)
    groups = stacked.shape[1]
    filtered = F.conv2d(stacked, kernel.view(1, 1, 1, -1).expand(groups, 1, 1, -1), groups=groups)
    filtered = F.conv2d(filtered, kernel.view(1, 1, -1, 1).expand(groups, 1, -1, 1), groups=groups)
    return ssim_map_from_moments(filtered, channels=x.shape[1], data_range=1.0, covariance_scale=1.0)


def ssim_gaussian(generated: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """SSIM ``(N,)``: Gaussian window 11 / sigma 1.5 per RGB channel, valid region, data range 1.

    Equals ``skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=1, channel_axis=...)``; computed in float64.
    """
    return ssim_gaussian_map(generated, target).flatten(1).mean(dim=1)


def masked_frame_ssim(generated: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Gaussian SSIM ``(N,)`` averaged over the window centres where ``mask (N, H, W)`` is True; NaN for an empty mask.

    The map covers the valid region (window centres at least 5 pixels inside the frame), so the
    mask is cropped alike; with an all-True mask this is :func:`ssim_gaussian`.
    """
    ssim_map = ssim_gaussian_map(generated, target).mean(dim=1)  # (N, h, w), channels averaged
    half = (generated.shape[-1] - ssim_map.shape[-1]) // 2  # 5 for the 11-pixel window
    weight = mask[:, half : mask.shape[1] - half, half : mask.shape[2] - half].to(torch.float64)
    return (ssim_map * weight).flatten(1).sum(dim=1) / weight.flatten(1).sum(dim=1)  # NaN where the mask is empty


def gray_uint8(frames: torch.Tensor) -> torch.Tensor:
    """OpenCV's 8-bit RGB->gray, ``(R*4899 + G*9617 + B*1868 + 8192) >> 14``, of [0, 1] frames ``(N, 3, H, W)``."""
    rgb = (frames.clamp(0, 1) * 255).round().to(torch.int64)
    gray = (rgb[:, 0] * 4899 + rgb[:, 1] * 9617 + rgb[:, 2] * 1868 + 8192) >> 14
    return gray[:, None]  # (N, 1, H, W)


def ssim_disco(generated: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """SSIM ``(N,)`` as DisCo evaluates it: 8-bit grayscale (cv2), 7x7 uniform window, sample covariance.

    Equals ``skimage.metrics.structural_similarity(gray1, gray2)`` on uint8 gray images (its
    defaults: ``win_size=7``, ``use_sample_covariance=True``, ``data_range=255``).
    """
    check_window(generated, 7)
    x, y = gray_uint8(generated).double(), gray_uint8(target).double()
    stacked = torch.cat([x, y, x * x, y * y, x * y], dim=1)  # (N, 5, H, W)
    filtered = F.avg_pool2d(stacked, kernel_size=7, stride=1)
    return ssim_from_moments(filtered, channels=1, data_range=255.0, covariance_scale=49 / 48)


SSIM_MODES = {"gaussian": ssim_gaussian, "disco": ssim_disco}


class SSIM(FrameMetric):
    """SSIM per frame, averaged over each clip's frames, then over clips.

    ``mode="gaussian"`` (default): the common definition (:func:`ssim_gaussian`);
    ``mode="disco"``: DisCo's evaluation (:func:`ssim_disco`), about 0.07 higher on the same pair.
    """

    name = "ssim"
    higher_is_better = True

    def __init__(self, mode: str = "gaussian", **kwargs) -> None:
        super().__init__(**kwargs)
        if mode not in SSIM_MODES:
            raise ValueError(f"ssim: unknown mode {mode!r}; choose one of {sorted(SSIM_MODES)}")
        self.mode = mode

    def frame_values(self, generated, target, annotations) -> torch.Tensor:
        """Per-frame SSIM."""
        return SSIM_MODES[self.mode](generated, target)


class MaskedSSIM(MaskedFrameMetric):
    """SSIM (Gaussian window) inside the person mask (:func:`masked_frame_ssim`)."""

    name = "ssim_mask"
    masked_value = staticmethod(masked_frame_ssim)
