"""The one place that knows how pixels map to latents and tokens.

The Wan VAE is causal in time: ``1 + 4k`` frames become ``1 + k`` latent frames; it is ``8x``
in space; the DiT patchifies ``(1, 2, 2)``. Pose encoders, loss masks, token replace and the
data pipeline all derive their shapes from :class:`Compression`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Compression:
    """Temporal/spatial compression of VAE + patchify (Wan defaults)."""

    vae_time: int = 4
    vae_space: int = 8
    patch_time: int = 1
    patch_space: int = 2

    @property
    def token_space(self) -> int:
        """Pixels per token side (16 for Wan)."""
        return self.vae_space * self.patch_space

    def latent_frames(self, frames: int) -> int:
        """Latent frames for ``frames`` pixel frames (causal: 1 + 4k -> 1 + k)."""
        self.check_frames(frames)
        return 1 + (frames - 1) // self.vae_time

    def pixel_frames(self, latent_frames: int) -> int:
        """Pixel frames that encode to ``latent_frames`` latent frames."""
        return 1 + (latent_frames - 1) * self.vae_time

    def latent_size(self, height: int, width: int) -> tuple[int, int]:
        """Latent (h, w) for a pixel (height, width)."""
        self.check_size(height, width)
        return height // self.vae_space, width // self.vae_space

    def token_grid(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
        """Token grid (f, h, w) for a pixel video."""
        lh, lw = self.latent_size(height, width)
        return self.latent_frames(frames) // self.patch_time, lh // self.patch_space, lw // self.patch_space

    def check_frames(self, frames: int) -> None:
        """Raise if ``frames`` is not 1 + k * vae_time."""
        if frames < 1 or (frames - 1) % self.vae_time:
            raise ValueError(
                f"frame count {frames} is not 1 + {self.vae_time}k (valid: 1, {1 + self.vae_time}, "
                f"{1 + 2 * self.vae_time}, ...)"
            )

    def check_size(self, height: int, width: int) -> None:
        """Raise if a pixel size does not divide into whole tokens."""
        t = self.token_space
        if height % t or width % t:
            raise ValueError(f"size {height}x{width} is not a multiple of {t} (VAE {self.vae_space}x, patch {self.patch_space})")


WAN = Compression()
