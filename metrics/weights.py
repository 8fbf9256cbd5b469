"""Where each feature network's weight file comes from and where it is looked up locally.

Nothing is downloaded. A file is looked up, in order: an explicit path, ``weights_dir``, then
torch hub's checkpoint cache (``$TORCH_HOME/hub/checkpoints``, where torchvision, lpips and
torch-fidelity keep their downloads). A missing file raises :class:`MissingWeightsError` naming
the file, the directories searched and the place to get it from.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch


class MissingWeightsError(FileNotFoundError):
    """A feature network's weight file is not where the metric looks for it."""


@dataclass(frozen=True)
class WeightFile:
    """A weight file: accepted names (first = canonical), the metric needing it, where it comes from."""

    names: tuple[str, ...]
    metric: str
    source: str


INCEPTION = WeightFile(
    ("weights-inception-2015-12-05-6726825d.pth", "pt_inception-2015-12-05-6726825d.pth"),
    "fid",
    "torch-fidelity's InceptionV3 (TF 2015-12-05 weights): https://github.com/toshas/torch-fidelity/releases/"
    "download/v0.2.0/weights-inception-2015-12-05-6726825d.pth (pytorch-fid's pt_inception-2015-12-05-6726825d.pth "
    "has the same layout)",
)
VGG16 = WeightFile(
    ("vgg16-397923af.pth",),
    "lpips",
    "torchvision's ImageNet VGG16: https://download.pytorch.org/models/vgg16-397923af.pth "
    "(the LPIPS linear layers ship inside the lpips package)",
)
ALEXNET = WeightFile(
    ("alexnet-owt-7be5be79.pth",),
    "lpips",
    "torchvision's ImageNet AlexNet: https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
)
RESNET3D50 = WeightFile(
    ("resnet-50-kinetics.pth",),
    "fid_vid",
    "the Kinetics-400 3D ResNet-50 of kenshohara/3D-ResNets-PyTorch (pretrained models on its README; "
    "DisCo expects it at eval_fvd/resnet-50-kinetics.pth)",
)
I3D_TORCHSCRIPT = WeightFile(
    ("i3d_torchscript.pt",),
    "fvd",
    "StyleGAN-V's TorchScript I3D: https://www.dropbox.com/s/ge9e5ujwgetktms/i3d_torchscript.pt",
)
I3D_STATE_DICT = WeightFile(
    ("i3d_pretrained_400.pt",),
    "fvd",
    "VideoGPT's I3D state dict (link in wilson1yan/VideoGPT videogpt/fvd; DisCo expects it at "
    "eval_fvd/i3d_pretrained_400.pt)",
)


def search_dirs(weights_dir: str | Path | None) -> list[Path]:
    """Directories searched for weight files, in order."""
    dirs = [] if weights_dir is None else [Path(weights_dir)]
    return dirs + [Path(torch.hub.get_dir()) / "checkpoints"]


def locate(spec: WeightFile, weights_dir: str | Path | None, path: str | Path | None = None) -> Path:
    """Path of ``spec``'s file: ``path`` if given, else the first match in :func:`search_dirs`."""
    if path is not None:
        if Path(path).is_file():
            return Path(path)
        raise MissingWeightsError(f"{spec.metric}: weight file {path} does not exist. It is {spec.source}.")
    dirs = search_dirs(weights_dir)
    for directory in dirs:
        for name in spec.names:
            if (directory / name).is_file():
                return directory / name
    searched = ", ".join(str(d) for d in dirs)
    raise MissingWeightsError(
        f"{spec.metric}: weight file {spec.names[0]} not found (searched {searched}). "
        f"It is {spec.source}. Place it in {dirs[0]} (metrics.weights_dir)."
    )


def load_tensors(path: Path) -> dict:
    """``torch.load`` restricted to tensors and plain containers (no arbitrary unpickling)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for corrupt or foreign files
        raise ValueError(f"{path}: cannot read a PyTorch state dict: {error}") from error
