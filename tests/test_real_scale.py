"""The real Wan architectures, built from this framework's configs on the meta device (no memory, no weights)."""

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

CONF = str(Path(__file__).resolve().parent.parent / "conf")

# Parameter counts of Wan's transformers: diffusers' classes on the released configs (Wan-AI/*-Diffusers
# transformer/config.json); 1.3B is the 5.68 GB of float32 in Wan2.1-T2V-1.3B-Diffusers, 14B the nominal 14B.
WAN_PARAMETERS = {
    "wan21_t2v_1_3b": 1_418_996_800,
    "wan21_t2v_14b": 14_288_491_584,
    "wan21_i2v_14b": 16_394_878_784,
    "wan22_animate_14b": 17_274_816_884,
}
# the Wan2.1 VAE (Wan2.1_VAE.pth: 508 MB of float32)
WAN21_VAE_PARAMETERS = 126_892_531


def composed(conf: str, backbone: str, *overrides: str):
    """``conf`` on the real ``backbone`` with seeded random weights (``path=null``) instead of local files."""
    with initialize_config_dir(config_dir=CONF, version_base=None):
        return compose(conf, overrides=[f"backbone={backbone}", "backbone.transformer.path=null", "backbone.vae.path=null",
                                        "backbone.text.encoder=null", "method.latent_cache=null", *overrides])


def on_meta(node):
    """Instantiate a config node on the meta device: shapes without memory."""
    with torch.device("meta"):
        return instantiate(node)


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("backbone", sorted(WAN_PARAMETERS))
def test_the_real_backbone_presets_build_wan_on_the_meta_device(backbone):
    built = on_meta(composed("frameprompt", backbone).backbone)
    assert all(p.is_meta for p in built.parameters())
    assert count(built.transformer) == WAN_PARAMETERS[backbone] and count(built.vae) == WAN21_VAE_PARAMETERS
    assert built.compression.token_space == 16 and built.compression.vae_space == 8 and built.compression.vae_time == 4


@pytest.mark.parametrize(
    ("conf", "backbone", "overrides"),
    [
        ("frameprompt", "wan21_t2v_14b", []),
        ("unianimate", "wan21_i2v_14b", []),
        ("onetoall", "wan21_t2v_14b", ["method.extractor_blocks=7"]),  # M = 7 for N = 40 blocks (the paper's 14B)
        ("everanimate_animate", "wan22_animate_14b", []),
    ],
)
def test_each_method_builds_on_its_real_backbone_keeping_every_wan_weight(conf, backbone, overrides):
    cfg = composed(conf, backbone, *overrides)
    wan = on_meta(cfg.backbone).transformer.state_dict()
    system = on_meta(cfg.method)
    ours = system.backbone.transformer.state_dict()
    assert all(key in ours and ours[key].shape == value.shape for key, value in wan.items())  # it fine-tunes Wan, it does not replace it
    assert count(system) >= WAN_PARAMETERS[backbone] + WAN21_VAE_PARAMETERS  # plus the method's own modules, if any (FramePrompt has none)


def test_a_t2v_base_widened_for_unianimate_gains_only_the_new_input_channels():
    system = on_meta(composed("unianimate", "wan21_t2v_1_3b").method)
    # 20 new input channels (4 mask + 16 reference latent) x 1536 outputs x a 1 x 2 x 2 patch
    assert count(system.backbone.transformer) - WAN_PARAMETERS["wan21_t2v_1_3b"] == 20 * 1536 * 4
