"""EverAnimate's Restorative Flow Matching (RFM): learn to pull a drifted chunk back to the clean path.

The clean target chunk ``x0`` is perturbed in pixel space (:class:`DriftPerturbation`: colour
shift, sharpness, saturation) and encoded, ``x0~ = E(P(x0))``. The model sees
``x_t~ = (1 - t) x0~ + t eps`` and regresses

    v* = (eps - x0) + w(t) (x0~ - x0),     w(t) = a exp(-(t - mu)^2 / (2 s^2))

the plain flow-matching velocity plus a correction towards the clean endpoint. The exact constant
velocity from ``x_t~`` to ``x0`` would use ``(1 - t) / t`` in place of ``w(t)``, which explodes as
t -> 0; the bell ``w`` is bounded and decays at both ends. The official code (``loss.py``,
schedule ``gaussian_timestep``) writes the correction as ``v_clean + alpha(t) (x_t~ - x_t)`` =
``(eps - x0) + alpha(t) (1 - t) (x0~ - x0)`` with ``alpha`` the bell ``exp(-2 (t - 1/2)^2)``
(mu = 1/2, s = 1/2) min-max normalised over [0, 1] and scaled by its weight (``form="official"``).
With no perturbation (``x0~ = x0``) both are plain flow matching.
"""

from __future__ import annotations

import torch
import torchvision.transforms.v2.functional as TF
from torch import Tensor

FORMS = ("paper", "official")


def bell_weight(t: Tensor, amplitude: float, mean: float, std: float) -> Tensor:
    """w(t) = a exp(-(t - mu)^2 / (2 s^2)), elementwise."""
    return amplitude * torch.exp(-((t - mean) ** 2) / (2 * std**2))


def restoration_coefficient(t: Tensor, amplitude: float, mean: float, std: float, form: str = "paper") -> Tensor:
    """The coefficient of (x0~ - x0) in the RFM target at time t: w(t), or alpha(t) (1 - t) in the official form."""
    if form not in FORMS:
        raise ValueError(f"restorative form {form!r}: use one of {', '.join(FORMS)}")
    if form == "paper":
        return bell_weight(t, amplitude, mean, std)
    lowest = bell_weight(torch.tensor(0.0 if mean >= 0.5 else 1.0), 1.0, mean, std)  # the bell's minimum on [0, 1]
    alpha = (bell_weight(t, 1.0, mean, std) - lowest) / (1 - lowest).clamp_min(1e-8)
    return amplitude * alpha * (1 - t)


def restorative_target(clean: Tensor, perturbed: Tensor, noise: Tensor, coefficient: Tensor) -> Tensor:
    """v* = (eps - x0) + c(t) (x0~ - x0); latents (B, C, F, h, w), ``coefficient`` (B, F) per frame."""
    return noise - clean + coefficient[:, None, :, None, None].to(clean) * (perturbed - clean)


class DriftPerturbation:
    """P: random colour shift, sharpness and saturation changes of a chunk's pixels, one draw per clip.

    ``color_shift``: largest per-channel offset (pixels in [-1, 1]); ``sharpness`` and
    ``saturation``: largest relative change of torchvision's factors (factor drawn in
    [1 - s, 1 + s]); ``probability``: chance that a clip is perturbed at all.
    """

    def __init__(self, color_shift: float = 0.1, sharpness: float = 0.5, saturation: float = 0.3, probability: float = 1.0):
        for name, value in (("color_shift", color_shift), ("sharpness", sharpness), ("saturation", saturation)):
            if value < 0:
                raise ValueError(f"perturbation {name}={value}: must be >= 0")
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f"perturbation probability={probability}: a probability in [0, 1]")
        self.color_shift, self.sharpness, self.saturation = color_shift, sharpness, saturation
        self.probability = probability

    @property
    def identity(self) -> bool:
        """Whether P is the identity map (nothing is ever perturbed)."""
        return self.probability == 0 or (self.color_shift == 0 and self.sharpness == 0 and self.saturation == 0)

    def __call__(self, video: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Perturbed copy of ``video`` (B, 3, T, H, W) in [-1, 1], each clip with ``probability``."""
        return torch.stack([self.perturb_clip(clip, generator) if self._draw(generator) < self.probability else clip for clip in video])

    def chosen(self, batch_size: int, generator: torch.Generator | None = None) -> Tensor:
        """(B,) bool: the clips a draw perturbs (the others keep P(x0) = x0, so their latents need no new encoding)."""
        return torch.rand(batch_size, generator=generator) < self.probability if not self.identity else torch.zeros(batch_size, dtype=torch.bool)

    def perturb_clip(self, clip: Tensor, generator: torch.Generator | None) -> Tensor:
        """One clip (3, T, H, W) in [-1, 1], all frames changed alike."""
        frames = ((clip.transpose(0, 1).float() + 1) / 2).clamp(0, 1)  # (T, 3, H, W) in [0, 1]
        if self.saturation:
            frames = TF.adjust_saturation(frames, 1 + self.saturation * self._symmetric(generator))
        if self.sharpness:
            frames = TF.adjust_sharpness(frames, max(0.0, 1 + self.sharpness * self._symmetric(generator)))
        if self.color_shift:
            shift = torch.stack([torch.tensor(self._symmetric(generator)) for _ in range(3)]) * self.color_shift / 2
            frames = (frames + shift.view(1, 3, 1, 1)).clamp(0, 1)
        return (frames * 2 - 1).transpose(0, 1).to(clip.dtype)

    @staticmethod
    def _draw(generator: torch.Generator | None) -> float:
        return float(torch.rand((), generator=generator))

    @classmethod
    def _symmetric(cls, generator: torch.Generator | None) -> float:
        return 2 * cls._draw(generator) - 1


def check_bell(amplitude: float, mean: float, std: float) -> None:
    """Reject a bell that cannot be meant: negative amplitude, mean outside [0, 1], std <= 0."""
    if amplitude < 0:
        raise ValueError(f"method.restorative.amplitude={amplitude}: must be >= 0")
    if not 0.0 <= mean <= 1.0:
        raise ValueError(f"method.restorative.mean={mean}: a flow time in [0, 1]")
    if std <= 0:
        raise ValueError(f"method.restorative.std={std}: must be > 0")
