"""LPIPS (lpips package, local torchvision trunk) and V-MAE (a tiny random VideoMAE saved by the test)."""

import pytest
import torch
import torchvision

from metrics import extractors
from metrics.perceptual import LPIPS
from metrics.vmae import VMAE
from metrics.weights import MissingWeightsError


@pytest.fixture(scope="module")
def trunk_dir(tmp_path_factory):
    """torchvision VGG16 and AlexNet files with random weights (the ``features.*`` part LPIPS reads)."""
    directory = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    files = {"vgg16-397923af.pth": torchvision.models.vgg16, "alexnet-owt-7be5be79.pth": torchvision.models.alexnet}
    for name, builder in files.items():
        features = builder().features.state_dict()
        torch.save({f"features.{key}": value for key, value in features.items()}, directory / name)
    return directory


@pytest.mark.parametrize("net", ["vgg", "alex"])
def test_lpips_of_identical_inputs_is_zero(trunk_dir, net):
    video = torch.rand(1, 3, 2, 32, 32, generator=torch.Generator().manual_seed(0))
    metric = LPIPS(net=net, weights_dir=trunk_dir)
    metric.update(video, video)
    assert metric.compute().item() == pytest.approx(0.0, abs=1e-9)
    metric.update(video, video.flip(-1))
    assert metric.last_clip_values.item() > 0


def test_lpips_trunk_comes_from_the_torchvision_file(trunk_dir):
    network = extractors.lpips_network("alex", str(trunk_dir / "alexnet-owt-7be5be79.pth")).module
    saved = torch.load(trunk_dir / "alexnet-owt-7be5be79.pth")
    assert torch.equal(network.net.state_dict()["slice2.3.weight"], saved["features.3.weight"])
    assert network.lin0.model[1].weight.abs().sum() > 0  # the shipped linear layers are loaded


def test_lpips_unit_inputs_reproduce_disco_feeding_0_1_images(trunk_dir):
    generator = torch.Generator().manual_seed(1)
    generated, target = torch.rand(1, 3, 1, 32, 32, generator=generator), torch.rand(1, 3, 1, 32, 32, generator=generator)
    network = extractors.lpips_network("vgg", str(trunk_dir / "vgg16-397923af.pth"))
    for unit_inputs, scale in ((False, lambda x: x * 2 - 1), (True, lambda x: x)):
        metric = LPIPS(unit_inputs=unit_inputs, weights_dir=trunk_dir)
        metric.update(generated, target)
        expected = network(scale(generated[:, :, 0]), in1=scale(target[:, :, 0])).item()
        assert metric.compute().item() == pytest.approx(expected, rel=1e-6)


def test_lpips_without_the_trunk_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(MissingWeightsError, match="vgg16-397923af.pth"):
        LPIPS(weights_dir=tmp_path)


@pytest.fixture(scope="module")
def videomae_dir(tmp_path_factory):
    """A tiny random VideoMAE (4 frames, 32 x 32) saved in the transformers layout."""
    from transformers import VideoMAEConfig, VideoMAEModel

    config = VideoMAEConfig(
        image_size=32, patch_size=16, num_frames=4, tubelet_size=2, hidden_size=32,
        num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
    )  # fmt: skip
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("weights") / "videomae-tiny"
    VideoMAEModel(config).save_pretrained(directory)
    return directory


def test_vmae_is_zero_for_identical_clips_and_positive_otherwise(videomae_dir):
    generator = torch.Generator().manual_seed(0)
    target = torch.rand(2, 3, 9, 40, 48, generator=generator)
    metric = VMAE(model=str(videomae_dir), window_stride=2)
    metric.update(target, target)
    assert metric.compute()["vmae"].item() == pytest.approx(0.0, abs=1e-6)
    metric.update(torch.rand(2, 3, 9, 40, 48, generator=generator), target)
    assert (metric.last_clip_values > 0).all()


def test_vmae_finds_the_model_in_weights_dir_by_name(videomae_dir):
    metric = VMAE(model="some-org/videomae-tiny", weights_dir=videomae_dir.parent, distance="l1")
    assert metric.extractor.frames == 4 and metric.extractor.dim == 32


def test_vmae_skips_clips_shorter_than_a_window(videomae_dir):
    metric = VMAE(model=str(videomae_dir))
    video = torch.rand(1, 3, 3, 32, 32)
    metric.update(video, video)
    result = metric.compute()
    assert result["skipped_clips"].item() == 1 and torch.isnan(result["vmae"])


def test_vmae_distance_is_the_mean_over_windows(videomae_dir):
    calls = []

    class Constant:
        frames, dim = 4, 2

        def __call__(self, windows):
            calls.append(windows.shape[0])
            return torch.stack([windows.float().mean(dim=(1, 2, 3, 4)), torch.ones(windows.shape[0])], dim=1)

    metric = VMAE(extractor=Constant(), distance="l1", window_stride=4, frame_chunk=4)
    target = torch.zeros(1, 3, 8, 4, 4, dtype=torch.uint8)
    generated = target.clone()
    generated[:, :, 4:] = 10  # second window differs by 10 in the first feature
    metric.update(generated, target)
    assert metric.compute()["vmae"].item() == pytest.approx((0 + 10 / 2) / 2)
    assert calls == [1, 1, 1, 1]  # one window per forward with a 4-frame budget


def test_vmae_missing_model_says_where_to_put_it(tmp_path):
    with pytest.raises(MissingWeightsError, match="videomae-base-finetuned-kinetics"):
        VMAE(weights_dir=tmp_path)
