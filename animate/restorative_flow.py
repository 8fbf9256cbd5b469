"""EverAnimate's Restorative Flow Matching (RFM): learn to pull a drifted chunk back to the clean path.

The clean target chunk ``x0`` is perturbed in pixel space (:class:`DriftPerturbation`: colour
shift, sharpness, saturation) and encoded, ``x0~ = E(P(x0))``. The model sees
``x_t~ = (1 - t) x0~ + t eps`` and regresses

    v* = (eps - x0) + w(t) (x0~ - x0)

the plain flow-matching velocity plus a correction towards the clean endpoint. The exact constant
velocity from ``x_t~`` to ``x0`` would use ``(1 - t) / t`` in place of ``w(t)``, which explodes as
t -> 0; the paper reschedules it with a bounded bell that "peaks in the intermediate regions and
smoothly decays near both ends", following DiffSynth's flow-matching loss weights: the Gaussian
``g(t) = exp(-(t - mu)^2 / (2 s^2))`` min-max normalised over [0, 1], ``w = a (g - g_min) / (1 - g_min)``
(``normalised``; with mu = s = 1/2, w(0) = w(1) = 0 and w(1/2) = a; unnormalised, g(0) = g(1) = 0.61).
The official code (``loss.py``, schedule ``gaussian_timestep``) writes the correction as
``v_clean + alpha(t) (x_t~ - x_t)`` = ``(eps - x0) + alpha(t) (1 - t) (x0~ - x0)`` with ``alpha`` that
normalised bell (``form="official"``). With no perturbation (``x0~ = x0``) both are plain flow matching.
Which draws are restored (the official ``rand_aug_sigma_threshold`` and ``video_aug_prob``) is
:class:`DriftPerturbation`'s ``probability`` and the method's ``restorative.min_time``.
"""

from __future__ import annotations

import torch
import torchvision.transforms.v2.functional as TF
from torch import Tensor

FORMS = ("paper", "official")


def bell_weight(t: Tensor, amplitude: float, mean: float, std: float, normalised: bool = True) -> Tensor:
    """w(t) = a g(t), g(t) = exp(-(t - mu)^2 / (2 s^2)), elementwise; ``normalised``: g min-max normalised over [0, 1]."""
    bell = torch.exp(-((t - mean) ** 2) / (2 * std**2))
    if not normalised:
        return amplitude * bell
    lowest = torch.exp(torch.tensor(-max(mean, 1 - mean) ** 2 / (2 * std**2)))  # g's minimum on [0, 1], at the end farther from mu
    return amplitude * (bell - lowest) / (1 - lowest).clamp_min(1e-8)


def restoration_coefficient(t: Tensor, amplitude: float, mean: float, std: float, form: str = "paper", normalised: bool = True) -> Tensor:
    """The coefficient of (x0~ - x0) in the RFM target at time t: w(t), or w(t) (1 - t) in the official form."""
    if form not in FORMS:
        raise ValueError(f"restorative form {form!r}: use one of {', '.join(FORMS)}")
    weight = bell_weight(t, amplitude, mean, std, normalised)
    return weight if form == "paper" else weight * (1 - t)


def restorative_target(clean: Tensor, perturbed: Tensor, noise: Tensor, coefficient: Tensor) -> Tensor:
    """v* = (eps - x0) + c(t) (x0~ - x0); latents (B, C, F, h, w), ``coefficient`` (B, F) per frame."""
    return noise - clean + coefficient[:, None, :, None, None].to(clean) * (perturbed - clean)


class DriftPerturbation:
    """P: random colour shift, sharpness and saturation changes of a chunk's pixels, one draw per clip.

    ``color_shift``: largest per-channel offset (pixels in [-1, 1]); ``sharpness`` and
    ``saturation``: largest relative change of torchvision's factors (factor drawn in
    [1 - s, 1 + s]); ``probability``: chance that a clip is perturbed at all (official: its ``video_aug_prob``
    0.8 is drawn twice, once when the perturbed latents are encoded and once in the loss: 0.8 x 0.8 = 0.64).
    """

    def __init__(self, color_shift: float = 0.1, sharpness: float = 0.5, saturation: float = 0.3, probability: float = 0.64):
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


def check_bell(amplitude: float, mean: float, std: float, min_time: float = 0.0) -> None:
    """Reject a bell that cannot be meant (negative amplitude, mean outside [0, 1], std <= 0) and a ``min_time`` outside [0, 1]."""
    if not 0.0 <= min_time <= 1.0:
        raise ValueError(f"method.restorative.min_time={min_time}: a flow time in [0, 1]")
    if amplitude < 0:
        raise ValueError(f"method.restorative.amplitude={amplitude}: must be >= 0")
    if not 0.0 <= mean <= 1.0:
        raise ValueError(f"method.restorative.mean={mean}: a flow time in [0, 1]")
    if std <= 0:
        raise ValueError(f"method.restorative.std={std}: must be > 0")
