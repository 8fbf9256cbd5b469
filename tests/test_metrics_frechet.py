"""Frechet distance closed forms, streamed moments, sampling of windows, FID and FVD wiring."""

from unittest import mock

import numpy as np
import pytest
import torch

from metrics import extractors
from metrics.frechet import FID, FIDVID, FVD, frechet_distance
from metrics.weights import MissingWeightsError


class MeanColour:
    """A toy frame extractor: the mean colour of each uint8 frame."""

    frames = None
    dim = 3

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        assert frames.dtype == torch.uint8 and frames.ndim == 4
        return frames.float().mean(dim=(2, 3))


class WindowMean:
    """A toy window extractor: the mean colour of each uint8 window; records how many it saw."""

    dim = 3

    def __init__(self, frames: int = 4) -> None:
        self.frames = frames
        self.seen = 0

    def __call__(self, windows: torch.Tensor) -> torch.Tensor:
        assert windows.dtype == torch.uint8 and windows.shape[2] == self.frames
        self.seen += windows.shape[0]
        return windows.float().mean(dim=(2, 3, 4))


def colourful(seed: int, clips: int = 4, frames: int = 6) -> torch.Tensor:
    """Clips ``(B, 3, T, 8, 8)`` whose frames have random flat colours."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(clips, 3, frames, 1, 1, generator=generator).expand(-1, -1, -1, 8, 8).contiguous()


def test_frechet_of_shifted_identity_gaussians_is_the_dimension():
    for dim in (1, 5, 64):
        assert frechet_distance(np.zeros(dim), np.eye(dim), np.ones(dim), np.eye(dim)) == pytest.approx(dim, abs=1e-8)


def test_frechet_of_diagonal_gaussians_is_the_sum_of_root_differences():
    a, b = np.array([0.5, 2.0, 4.0, 9.0]), np.array([1.0, 1.0, 0.25, 16.0])
    expected = np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(np.zeros(4), np.diag(a), np.zeros(4), np.diag(b)) == pytest.approx(expected, abs=1e-8)


@pytest.mark.parametrize("covariance, bias", [("unbiased", False), ("biased", True)])
def test_streamed_moments_equal_numpy_statistics(covariance, bias):
    generated, target = colourful(0), colourful(1)
    metric = FID(extractor=MeanColour(), covariance=covariance, frame_chunk=4)
    metric.update(generated[:2], target[:2])
    metric.update(generated[2:], target[2:])
    to_features = lambda v: (v * 255).round().transpose(1, 2).reshape(-1, 3, 64).mean(dim=2).double().numpy()  # noqa: E731
    features_g, features_t = to_features(generated), to_features(target)
    covariance_g = np.cov(features_g, rowvar=False, bias=bias)
    covariance_t = np.cov(features_t, rowvar=False, bias=bias)
    expected = frechet_distance(features_g.mean(0), covariance_g, features_t.mean(0), covariance_t)
    assert metric.compute().item() == pytest.approx(expected, rel=1e-9)


def test_fewer_than_two_samples_give_nan_with_a_warning():
    metric = FID(extractor=MeanColour())
    metric.update(colourful(0, clips=1, frames=1), colourful(1, clips=1, frames=1))
    with pytest.warns(UserWarning, match="at least 2 samples"):
        assert torch.isnan(metric.compute())


def test_windows_at_a_stride_are_the_samples():
    extractor = WindowMean(frames=4)
    metric = FVD(extractor=extractor, window_stride=2)
    metric.update(colourful(0, clips=2, frames=9), colourful(1, clips=2, frames=9))
    assert int(metric.generated_count) == 2 * 3  # starts 0, 2, 4 fit in 9 frames
    assert extractor.seen == 2 * 2 * 3


def test_clip_mean_pads_with_the_last_frame_and_gives_one_sample_per_clip():
    clip = torch.zeros(1, 3, 6, 2, 2)
    clip[:, :, 5] = 1.0  # the last frame is white: padding to 8 frames repeats it
    metric = FIDVID(extractor=WindowMean(frames=4), samples="clip_mean")
    metric.update(clip, clip)
    assert int(metric.generated_count) == 1
    # windows [0..3] -> 0, [4, 5, 5, 5] -> 3/4 white: the clip sample is 255 * 3/8
    assert metric.generated_sum.tolist() == pytest.approx([255 * 3 / 8] * 3)


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="samples"):
        FIDVID(extractor=WindowMean(), samples="all")
    with pytest.raises(ValueError, match="covariance"):
        FID(extractor=MeanColour(), covariance="n")
    with pytest.raises(ValueError, match="network"):
        FVD(network="i3d")


def test_missing_weights_fail_naming_the_file(tmp_path):
    with pytest.raises(MissingWeightsError, match="weights-inception-2015-12-05"):
        FID(weights_dir=tmp_path)
    with pytest.raises(MissingWeightsError, match="resnet-50-kinetics.pth"):
        FIDVID(weights_dir=tmp_path)
    with pytest.raises(MissingWeightsError, match="i3d_pretrained_400.pt"):
        FVD(network="disco", weights_dir=tmp_path)


@pytest.fixture(scope="module")
def inception_file(tmp_path_factory):
    """torch-fidelity's InceptionV3 with random weights, saved in its own layout."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    with mock.patch.object(FeatureExtractorInceptionV3, "load_state_dict"), mock.patch(
        "torch_fidelity.feature_extractor_inceptionv3.load_state_dict_from_url"
    ):
        torch.manual_seed(0)
        network = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    path = tmp_path_factory.mktemp("weights") / "weights-inception-2015-12-05-6726825d.pth"
    torch.save(network.state_dict(), path)
    return path


def test_fid_runs_torch_fidelity_inception_from_weights_dir(inception_file):
    generated = torch.rand(2, 3, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    metric = FID(weights_dir=inception_file.parent)
    metric.update(generated, generated)
    assert int(metric.generated_count) == 2
    assert metric.generated_sum.shape == (2048,)
    assert torch.equal(metric.generated_sum, metric.target_sum)
    assert metric.generated_sum.abs().sum() > 0


def test_fid_networks_stay_out_of_the_state_dict_and_are_loaded_once(inception_file):
    first, second = FID(weights_path=inception_file), FID(weights_path=inception_file)
    assert first.extractor is second.extractor
    assert not any("Conv2d" in key or "Mixed" in key for key in first.state_dict())
    assert list(first.parameters()) == []


class StyleGanVStandIn(torch.nn.Module):
    """Stands in for StyleGAN-V's ``i3d_torchscript.pt``: same call, refuses other calls."""

    def forward(
        self, x: torch.Tensor, rescale: bool = False, resize: bool = False, return_features: bool = False
    ) -> torch.Tensor:
        if x.dtype != torch.uint8 or x.shape[2] != 16 or not (rescale and resize and return_features):
            raise RuntimeError("not called as StyleGAN-V calls the detector")
        return x.float().flatten(1)[:, :400]


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
def test_fvd_calls_the_torchscript_i3d_as_styleganv_does(tmp_path):
    torch.jit.script(StyleGanVStandIn()).save(str(tmp_path / "i3d_torchscript.pt"))
    metric = FVD(weights_dir=tmp_path)
    assert metric.ddof == 0  # StyleGAN-V normalises the covariance by N
    generator = torch.Generator().manual_seed(0)
    metric.update(torch.rand(3, 3, 16, 4, 4, generator=generator), torch.rand(3, 3, 16, 4, 4, generator=generator))
    assert int(metric.generated_count) == 3
    assert metric.compute().item() > 0


def test_fvd_on_the_state_dict_i3d_normalises_by_n_minus_1():
    metric = FVD(network="videogpt", extractor=WindowMean(16))
    assert metric.ddof == 1
    assert FVD(network="videogpt", covariance="biased", extractor=WindowMean(16)).ddof == 0


def test_kinetics_features_subtract_the_mean_at_112():
    seen = []
    network = lambda x: seen.append(x) or x.mean(dim=(2, 3, 4))  # noqa: E731
    features = extractors.KineticsResNetFeatures(network)
    windows = torch.full((1, 3, 16, 40, 60), 100, dtype=torch.uint8)
    features(windows)
    assert seen[0].shape == (1, 3, 16, 112, 112)
    assert seen[0][0, :, 0, 50, 50].tolist() == pytest.approx([100 - 114.7748, 100 - 107.7354, 100 - 99.4750], abs=1e-3)


class AnyLengthMean:
    """A toy video extractor taking windows of any length: the mean colour; records the lengths it saw."""

    dim, frames = 3, 4

    def __init__(self) -> None:
        self.lengths = []

    def __call__(self, windows: torch.Tensor) -> torch.Tensor:
        self.lengths += [windows.shape[2]] * windows.shape[0]
        return windows.float().mean(dim=(2, 3, 4))


def grey(levels: list[list[int]]) -> torch.Tensor:
    """Clips ``(B, 3, T, 2, 2)`` of flat grey uint8 frames at the given levels."""
    return torch.tensor(levels, dtype=torch.uint8)[:, None, :, None, None].expand(-1, 3, -1, 2, 2).contiguous()


def test_per_clip_fid_is_the_mean_of_each_clips_distance():
    # clip 1: generated grey levels 0, 2 against 1, 3; clip 2: 0, 2 against 2, 4. Within a clip both sides have the
    # same covariance (2 on every entry of the 3 x 3 grey feature), so each distance is |mean difference|^2 over
    # 3 channels: 3 x 1^2 = 3 and 3 x 2^2 = 12, averaged 7.5 (pytorch-fid per folder, then the mean over clips).
    generated, target = grey([[0, 2], [0, 2]]), grey([[1, 3], [2, 4]])
    per_clip = FID(extractor=MeanColour(), samples="per_clip")
    per_clip.update(generated, target)
    assert per_clip.compute().item() == pytest.approx(7.5, abs=1e-3)
    pooled = FID(extractor=MeanColour())  # all frames in one distribution: means 1 vs 2.5, variances 4/3 vs 5/3 (rank one)
    pooled.update(generated, target)
    assert pooled.compute().item() == pytest.approx(3 * 1.5**2 + 3 * (np.sqrt(4 / 3) - np.sqrt(5 / 3)) ** 2, abs=1e-3)
    with pytest.raises(ValueError, match="at least 2 frames"):
        FID(extractor=MeanColour(), samples="per_clip").update(grey([[0]]), grey([[1]]))


def test_whole_clip_fvd_feeds_each_clip_once_and_first_window_its_first_window():
    extractor = AnyLengthMean()
    whole = FVD(extractor=extractor, samples="whole_clip")
    clips = grey([[0] * 5 + [60] * 5, [30] * 10])
    whole.update(clips, clips)
    assert extractor.lengths == [10, 10, 10, 10] and int(whole.generated_count) == 2  # one sample per clip, all its frames
    assert whole.generated_sum.tolist() == pytest.approx([30 + 30] * 3)
    first = FVD(extractor=AnyLengthMean(), samples="first_window")  # StyleGAN-V: one 4-frame clip (here) per video
    first.update(clips, clips)
    assert int(first.generated_count) == 2 and first.generated_sum.tolist() == pytest.approx([0 + 30] * 3)
    with pytest.raises(ValueError, match="at least 4 frames"):
        first.update(grey([[0, 0, 0]]), grey([[0, 0, 0]]))


def test_each_preset_pins_its_protocol():
    from common.cli import compose_config

    presets = {name: compose_config("evaluate", [f"metrics={name}"]).metrics for name in ("onetoall", "disco", "frameprompt", "everanimate", "cheap")}
    onetoall = presets["onetoall"]
    assert (onetoall.fid.samples, onetoall.fid_vid.samples, onetoall.fvd.samples, onetoall.fvd.network) == ("per_clip", "clip_mean", "whole_clip", "disco")
    assert (presets["disco"].fvd.samples, presets["disco"].fvd.window_stride, presets["disco"].fid.samples) == ("windows", 1, "frames")
    assert (presets["frameprompt"].fvd.network, presets["frameprompt"].fvd.samples) == ("styleganv", "first_window")
    names = {(m.protocol, m.protocol_version) for m in presets.values()}
    assert len(names) == len(presets) and all(isinstance(version, int) and version >= 1 for _, version in names)
