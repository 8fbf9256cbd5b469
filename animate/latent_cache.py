"""A disk cache of VAE latents keyed by the data pipeline's ``cache_key``.

On CPU the VAE encode costs more than a tiny DiT step, so runs with deterministic windows and
crops (the tiny default) encode each clip once. Entries are written atomically (temporary file
then rename), so concurrent ranks and a killed run never leave a half-written entry.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor

from common.files import atomic_torch_save


class LatentCache:
    """Per-sample latents on disk; ``get_or_encode`` encodes only the misses of a batch."""

    def __init__(self, directory: str | os.PathLike | None, namespace: str = ""):
        self.directory = Path(directory) if directory else None
        self.namespace = namespace
        self.hits = 0
        self.misses = 0

    @property
    def enabled(self) -> bool:
        """Whether a directory is configured."""
        return self.directory is not None

    def path(self, key: str, name: str) -> Path:
        """File of one entry."""
        digest = hashlib.sha1(f"{self.namespace}|{name}|{key}".encode()).hexdigest()
        return self.directory / digest[:2] / f"{digest}.pt"

    def get_or_encode(self, keys: Sequence[str], name: str, pixels: Callable[[list[int]], Tensor], encode: Callable[[Tensor], Tensor]) -> Tensor:
        """Latents (B, ...) for ``keys``; ``pixels(indices)`` builds the inputs of the misses."""
        if not self.enabled:
            return encode(pixels(list(range(len(keys)))))
        found: dict[int, Tensor] = {}
        for i, key in enumerate(keys):
            path = self.path(key, name)
            if path.exists():
                try:
                    found[i] = torch.load(path, weights_only=True)
                except (RuntimeError, EOFError, OSError):
                    path.unlink(missing_ok=True)  # a corrupt entry is re-encoded
        missing = [i for i in range(len(keys)) if i not in found]
        self.hits += len(found)
        self.misses += len(missing)
        if missing:
            encoded = encode(pixels(missing))
            for i, latent in zip(missing, encoded):
                found[i] = latent
                atomic_torch_save(self.path(keys[i], name), latent.detach().cpu().clone())
        device = next(iter(found.values())).device
        return torch.stack([found[i].to(device) for i in range(len(keys))])
