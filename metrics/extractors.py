"""Feature extractors: a frozen network plus the preprocessing of the reference code it serves.

Each extractor maps uint8 frames ``(N, 3, H, W)`` (``frames is None``) or uint8 windows
``(S, 3, frames, H, W)`` to float features ``(N or S, dim)``. Networks are loaded once per process
and file (the loaders are cached), kept in eval mode without gradients, and stay outside the
metrics' module tree: they never enter a checkpoint or DDP's parameter list, and follow the input
to its device.
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path

import torch
from torch import nn

from metrics.networks.i3d import InceptionI3D
from metrics.networks.resnet3d import ResNet3D50, resnet3d_state_dict
from metrics.video import resize_frames, resize_short_side_and_crop
from metrics.weights import MissingWeightsError, load_tensors

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
KINETICS_MEAN = (114.7748, 107.7354, 99.4750)  # 3D-ResNets-PyTorch's activitynet mean, [0, 255] RGB


class FrozenNetwork:
    """An eval-mode, gradient-free network that moves to its input's device on call."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module.eval()
        for parameter in module.parameters():  # ScriptModules lack requires_grad_()
            parameter.requires_grad_(False)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        """Run the network on ``x``'s device."""
        return self.module.to(x.device)(x, **kwargs)


def channel_vector(values: tuple[float, ...], like: torch.Tensor) -> torch.Tensor:
    """``values`` as a ``(1, 3, 1, 1)`` tensor on ``like``'s device."""
    return torch.tensor(values, dtype=like.dtype, device=like.device).view(1, 3, 1, 1)


def frames_of(windows: torch.Tensor) -> torch.Tensor:
    """``(S, 3, T, H, W)`` -> ``(S * T, 3, H, W)``."""
    return windows.transpose(1, 2).flatten(0, 1)


def windows_of(frames: torch.Tensor, length: int) -> torch.Tensor:
    """``(S * T, 3, H, W)`` -> ``(S, 3, T, H, W)``."""
    return frames.unflatten(0, (-1, length)).transpose(1, 2)


class InceptionFeatures:
    """FID: 2048-d pool3 features of torch-fidelity's InceptionV3 (it resizes to 299 itself)."""

    frames = None
    dim = 2048

    def __init__(self, network: FrozenNetwork) -> None:
        self.network = network

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 ``(N, 3, H, W)`` -> ``(N, 2048)``."""
        (features,) = self.network(frames)
        return features


class KineticsResNetFeatures:
    """FID-VID (DisCo): 16-frame windows resized to 112 x 112 (bicubic, as PIL), mean subtracted, 3D ResNet-50."""

    frames = 16
    dim = 2048
    size = (112, 112)

    def __init__(self, network: FrozenNetwork) -> None:
        self.network = network

    def __call__(self, windows: torch.Tensor) -> torch.Tensor:
        """uint8 ``(S, 3, 16, H, W)`` -> ``(S, 2048)``."""
        frames = resize_frames(frames_of(windows).float(), self.size, "bicubic", antialias=True)
        frames = frames - channel_vector(KINETICS_MEAN, frames)
        return self.network(windows_of(frames, windows.shape[2]))


class TorchScriptI3DFeatures:
    """FVD (StyleGAN-V): the TorchScript I3D called as StyleGAN-V does, on uint8 16-frame windows."""

    frames = 16
    dim = 400

    def __init__(self, network: FrozenNetwork) -> None:
        self.network = network

    def __call__(self, windows: torch.Tensor) -> torch.Tensor:
        """uint8 ``(S, 3, 16, H, W)`` -> ``(S, 400)``; the script rescales and resizes to 224 itself."""
        return self.network(windows, rescale=True, resize=True, return_features=True)


class I3DFeatures:
    """FVD with the state-dict I3D: VideoGPT's or DisCo's preprocessing into [-1, 1] at 224 x 224.

    ``videogpt``: short side to 224 (bilinear), centre crop. ``disco``: resize to 224 x 224
    (bicubic, as PIL) without keeping the aspect ratio.
    """

    frames = 16
    dim = 400

    def __init__(self, network: FrozenNetwork, preprocessing: str) -> None:
        self.network = network
        self.preprocessing = preprocessing

    def __call__(self, windows: torch.Tensor) -> torch.Tensor:
        """uint8 ``(S, 3, 16, H, W)`` -> ``(S, 400)``."""
        frames = frames_of(windows).float() / 255.0
        if self.preprocessing == "videogpt":
            frames = resize_short_side_and_crop(frames, 224, "bilinear", antialias=False)
        else:
            frames = resize_frames(frames, (224, 224), "bicubic", antialias=True)
        return self.network(windows_of(frames * 2.0 - 1.0, windows.shape[2]))


class VideoMAEFeatures:
    """V-MAE: mean of VideoMAE's last hidden states over all tokens of a ``num_frames`` window.

    Preprocessing as ``VideoMAEImageProcessor``: short side to ``image_size`` (bilinear,
    antialiased), centre crop, ImageNet mean/std.
    """

    def __init__(self, network: FrozenNetwork, frames: int, image_size: int, dim: int) -> None:
        self.network = network
        self.frames = frames
        self.image_size = image_size
        self.dim = dim

    def __call__(self, windows: torch.Tensor) -> torch.Tensor:
        """uint8 ``(S, 3, frames, H, W)`` -> ``(S, dim)``."""
        frames = frames_of(windows).float() / 255.0
        frames = resize_short_side_and_crop(frames, self.image_size, "bilinear", antialias=True)
        frames = (frames - channel_vector(IMAGENET_MEAN, frames)) / channel_vector(IMAGENET_STD, frames)
        pixel_values = frames.unflatten(0, (-1, windows.shape[2]))  # (S, T, 3, h, w)
        return self.network(pixel_values).last_hidden_state.mean(dim=1)


@functools.cache
def inception(path: str) -> InceptionFeatures:
    """torch-fidelity's InceptionV3 from a local weight file (checked to be a plain state dict first)."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    load_tensors(Path(path))  # torch-fidelity itself loads with weights_only=False
    network = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=path)
    return InceptionFeatures(FrozenNetwork(network))


@functools.cache
def kinetics_resnet(path: str) -> KineticsResNetFeatures:
    """The Kinetics 3D ResNet-50 from ``resnet-50-kinetics.pth``."""
    network = ResNet3D50()
    load_strict(network, resnet3d_state_dict(load_tensors(Path(path))), path)
    return KineticsResNetFeatures(FrozenNetwork(network))


@functools.cache
def i3d_torchscript(path: str) -> TorchScriptI3DFeatures:
    """StyleGAN-V's TorchScript I3D."""
    try:
        with warnings.catch_warnings():  # torch.jit is deprecated, but the reference file is TorchScript
            warnings.simplefilter("ignore", FutureWarning)
            network = torch.jit.load(path, map_location="cpu")
    except RuntimeError as error:
        raise ValueError(f"{path}: not a TorchScript file: {error}") from error
    return TorchScriptI3DFeatures(FrozenNetwork(network))


@functools.cache
def i3d(path: str, preprocessing: str) -> I3DFeatures:
    """The state-dict I3D; DisCo builds its BatchNorms with eps 1e-3, VideoGPT with 1e-5."""
    network = InceptionI3D(bn_eps=1e-3 if preprocessing == "disco" else 1e-5)
    load_strict(network, load_tensors(Path(path)), path)
    return I3DFeatures(FrozenNetwork(network), preprocessing)


@functools.cache
def videomae(model: str, weights_dir: str | None) -> VideoMAEFeatures:
    """``VideoMAEModel`` from a directory, ``weights_dir/<name>``, or the local Hugging Face cache."""
    from transformers import VideoMAEModel

    candidates = [Path(model)] + ([] if weights_dir is None else [Path(weights_dir) / Path(model).name])
    directory = next((c for c in candidates if (c / "config.json").is_file()), None)
    try:
        network = VideoMAEModel.from_pretrained(directory or model, local_files_only=True)
    except (OSError, ValueError) as error:  # not cached, or not a valid repository id
        searched = ", ".join(str(c) for c in candidates)
        raise MissingWeightsError(
            f"vmae: VideoMAE model {model!r} not found (searched {searched} and the Hugging Face cache). "
            f"It is a transformers VideoMAE checkpoint from https://huggingface.co/{model}; place its files "
            f"(config.json, model.safetensors) in {candidates[-1]}."
        ) from error
    config = network.config
    return VideoMAEFeatures(FrozenNetwork(network), config.num_frames, config.image_size, config.hidden_size)


@functools.cache
def lpips_network(net: str, backbone_path: str) -> FrozenNetwork:
    """``lpips.LPIPS`` with its shipped linear layers and the torchvision backbone read from ``backbone_path``."""
    import lpips

    with warnings.catch_warnings():  # pnet_rand=True builds the torchvision trunk with a deprecated flag
        warnings.simplefilter("ignore")
        model = lpips.LPIPS(net=net, pnet_rand=True, verbose=False)
    backbone = load_tensors(Path(backbone_path))
    try:
        trunk = {name: backbone["features." + name.split(".", 1)[1]] for name in model.net.state_dict()}
    except KeyError as error:
        raise ValueError(f"{backbone_path}: not a torchvision {net} state dict (missing {error})") from error
    load_strict(model.net, trunk, backbone_path)
    return FrozenNetwork(model)


def load_strict(module: nn.Module, state: dict, path: str) -> None:
    """``load_state_dict(strict=True)`` with an error naming the file."""
    try:
        module.load_state_dict(state)
    except RuntimeError as error:
        raise ValueError(f"{path}: weights do not fit {type(module).__name__}: {error}") from error
