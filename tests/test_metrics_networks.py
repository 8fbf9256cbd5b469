"""Feature networks: the reference key layouts load, the loaders find files or say where to get them."""

import pytest
import torch

from metrics import extractors, weights
from metrics.networks.i3d import InceptionI3D
from metrics.networks.resnet3d import ResNet3D50


def test_resnet3d_has_the_kenshohara_layout():
    network = ResNet3D50()
    state = network.state_dict()
    assert state["conv1.weight"].shape == (64, 3, 7, 7, 7)
    assert state["layer1.0.downsample.0.weight"].shape == (256, 64, 1, 1, 1)
    assert state["layer4.2.conv3.weight"].shape == (2048, 512, 1, 1, 1)
    assert state["fc.weight"].shape == (400, 2048)
    # 2D ResNet-50 (25,557,032) with 3x3 -> 3x3x3, 7x7 -> 7x7x7 and a 400-way instead of 1000-way fc
    assert sum(p.numel() for p in network.parameters()) == 25_557_032 + 2 * 11_317_248 + 6 * 9408 - 600 * 2049


def test_resnet3d_loads_a_dataparallel_checkpoint_and_pools_2048_features(tmp_path):
    torch.manual_seed(0)
    source = ResNet3D50()
    state = {f"module.{key}": value for key, value in source.state_dict().items()}  # saved from DataParallel
    checkpoint = {"epoch": 200, "arch": "resnet-50", "state_dict": state}
    torch.save(checkpoint, tmp_path / "resnet-50-kinetics.pth")
    features = extractors.kinetics_resnet(str(tmp_path / "resnet-50-kinetics.pth"))
    assert torch.equal(features.network.module.layer3[5].conv2.weight, source.layer3[5].conv2.weight)
    windows = torch.randint(0, 256, (2, 3, 16, 40, 56), dtype=torch.uint8)
    assert features(windows).shape == (2, 2048)


def test_i3d_has_the_videogpt_layout():
    state = InceptionI3D().state_dict()
    assert state["Conv3d_1a_7x7.conv3d.weight"].shape == (64, 3, 7, 7, 7)
    assert state["Mixed_4f.b3b.conv3d.weight"].shape == (128, 528, 1, 1, 1)
    assert state["Mixed_5c.b1b.conv3d.weight"].shape == (384, 192, 3, 3, 3)
    assert state["logits.conv3d.weight"].shape == (400, 1024, 1, 1, 1)
    assert "logits.conv3d.bias" in state and "logits.bn.weight" not in state
    assert "Conv3d_1a_7x7.conv3d.bias" not in state


@pytest.mark.parametrize("preprocessing, eps", [("videogpt", 1e-5), ("disco", 1e-3)])
def test_i3d_state_dict_loads_with_the_reference_batchnorm_eps(tmp_path, preprocessing, eps):
    torch.manual_seed(0)
    state = {k: v for k, v in InceptionI3D().state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(state, tmp_path / "i3d_pretrained_400.pt")  # the original file has no num_batches_tracked
    features = extractors.i3d(str(tmp_path / "i3d_pretrained_400.pt"), preprocessing)
    assert features.network.module.Mixed_3b.b0.bn.eps == eps
    windows = torch.randint(0, 256, (1, 3, 16, 48, 64), dtype=torch.uint8)
    assert features(windows).shape == (1, 400)


def test_a_state_dict_of_another_network_is_refused_naming_the_file(tmp_path):
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "i3d_pretrained_400.pt")
    with pytest.raises(ValueError, match="i3d_pretrained_400.pt.*InceptionI3D"):
        extractors.i3d(str(tmp_path / "i3d_pretrained_400.pt"), "videogpt")


def test_locate_prefers_the_explicit_path_then_weights_dir(tmp_path):
    (tmp_path / "resnet-50-kinetics.pth").write_bytes(b"")
    assert weights.locate(weights.RESNET3D50, tmp_path) == tmp_path / "resnet-50-kinetics.pth"
    other = tmp_path / "elsewhere.pth"
    other.write_bytes(b"")
    assert weights.locate(weights.RESNET3D50, tmp_path, other) == other


def test_a_missing_file_names_itself_the_directories_and_its_source(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    with pytest.raises(weights.MissingWeightsError) as error:
        weights.locate(weights.I3D_TORCHSCRIPT, tmp_path / "weights")
    message = str(error.value)
    assert "i3d_torchscript.pt" in message
    assert str(tmp_path / "weights") in message and "torch_home" in message
    assert "dropbox" in message
    with pytest.raises(weights.MissingWeightsError, match="nowhere.pt does not exist"):
        weights.locate(weights.INCEPTION, None, tmp_path / "nowhere.pt")


def test_the_torch_hub_cache_is_searched(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cached = tmp_path / "hub" / "checkpoints" / "vgg16-397923af.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"")
    assert weights.locate(weights.VGG16, None) == cached


def test_unsafe_pickles_are_not_loaded(tmp_path):
    torch.save({"state_dict": {"x": torch.zeros(1)}, "hook": print}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="bad.pth"):
        weights.load_tensors(tmp_path / "bad.pth")
