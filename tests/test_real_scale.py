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
# open-clip xlm-roberta-large-vit-huge-14's visual tower as transformers' CLIPVisionModel (Wan's image_encoder/)
CLIP_VIT_H_14_PARAMETERS = 630_766_080  # 1.26 GB of float16 in the Wan2.1-I2V-14B-480P-Diffusers release


# seeded random weights of each architecture instead of local files (the meta device: shapes only)
WEIGHTS_FROM_ARCHITECTURE = ["backbone.transformer.path=null", "backbone.vae.path=null", "backbone.text.encoder=null", "++backbone.image_encoder.path=null"]


def composed(conf: str, backbone: str, *overrides: str):
    """``conf`` on the real ``backbone`` with seeded random weights (``path=null``) instead of local files."""
    with initialize_config_dir(config_dir=CONF, version_base=None):
        return compose(conf, overrides=[f"backbone={backbone}", *WEIGHTS_FROM_ARCHITECTURE, "method.latent_cache=null", *overrides])


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
    # I2V and Animate attend to the reference's CLIP tokens: open-clip ViT-H/14's visual tower (632M) comes with them
    assert (built.image_encoder is not None) == built.takes_image_tokens == (backbone in ("wan21_i2v_14b", "wan22_animate_14b"))
    if built.image_encoder is not None:
        assert count(built.image_encoder) == CLIP_VIT_H_14_PARAMETERS and built.image_encoder.dim == 1280


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


# conf/real/: the papers' recipes; (backbone, LoRA rank, training frames, sampler steps) as each paper states them
REAL_EXPERIMENTS = {
    "real/onetoall": ("wan21_t2v_1_3b", 0, 29, 30),
    "real/onetoall_stage1": ("wan21_t2v_1_3b", 0, 29, 30),
    "real/onetoall_stage2": ("wan21_t2v_1_3b", 0, 29, 30),
    "real/onetoall_stage3": ("wan21_t2v_1_3b", 0, 29, 30),
    "real/frameprompt": ("wan21_t2v_1_3b", 0, 81, 50),
    "real/frameprompt_14b": ("wan21_t2v_14b", 128, 81, 50),
    "real/unianimate": ("wan21_i2v_14b", 64, 81, 50),
    "real/everanimate": ("wan22_animate_14b", 128, 77, 20),
    "real/everanimate_stage1": ("wan22_animate_14b", 128, 77, 20),
    "real/everanimate_stage2": ("wan22_animate_14b", 128, 77, 20),
}


def test_every_real_scale_experiment_is_listed_and_checked():
    from experiments.cli import experiment_names

    assert sorted(REAL_EXPERIMENTS) == [name for name in experiment_names() if name.startswith("real/")]


@pytest.mark.parametrize("conf", sorted(REAL_EXPERIMENTS))
def test_real_scale_experiments_build_the_papers_models_on_the_meta_device(conf, monkeypatch):
    monkeypatch.setenv("ANIMATE_DATA", "/shards")
    backbone, rank, frames, steps = REAL_EXPERIMENTS[conf]
    with initialize_config_dir(config_dir=CONF, version_base=None):
        cfg = compose(conf, overrides=WEIGHTS_FROM_ARCHITECTURE)
    assert cfg.data.root == "/shards" and list(cfg.data.frame_buckets) == [frames] and cfg.data.random_window
    assert cfg.method.lora.rank == rank and cfg.method.sampler.steps == steps and cfg.trainer.precision == "bf16-mixed"
    assert cfg.method.latent_cache is None and cfg.backbone.gradient_checkpointing
    wan_keys = set(on_meta(cfg.backbone).transformer.state_dict())
    system = on_meta(cfg.method)
    transformer = system.backbone.transformer
    wan_trainable = [name for name, p in transformer.named_parameters() if p.requires_grad and name.replace(".base_layer", "") in wan_keys]
    trainable = sum(p.numel() for p in system.parameters() if p.requires_grad)
    if rank:  # LoRA: the adapter and the method's new modules train, every Wan weight stays frozen
        assert wan_trainable == [] and any("lora_" in name for name, _ in transformer.named_parameters())
        assert trainable < 0.1 * WAN_PARAMETERS[backbone]
    elif conf.endswith("onetoall_stage1"):  # the Reference Extractor, HRFA's W'k, W'v and the attention output W_o only
        assert wan_trainable and all(".attn1.to_out." in name for name in wan_trainable)
    elif conf.startswith("real/onetoall"):  # stages 2 and 3: + pose control, all of HRFA (the blocks' self-attention) and the patch embedding
        assert wan_trainable and all(".attn1." in name or name.startswith("patch_embedding.") for name in wan_trainable)
        assert any(name.startswith("patch_embedding.") for name in wan_trainable)
    else:  # a full fine-tune
        assert len(wan_trainable) == len(wan_keys)


@pytest.mark.parametrize(
    ("real", "tiny", "variant"),
    [("real/onetoall", "onetoall", v) for v in ("onetoall_base_extractor", "onetoall_no_reference_extractor", "onetoall_face_enhancement", "onetoall_no_region_weights", "onetoall_full_rope")]
    + [("real/unianimate", "unianimate", v) for v in ("unianimate_pose_layers_5", "unianimate_no_reference_pose", "unianimate_no_condition_dropout")]
    + [("real/everanimate", "everanimate", v) for v in ("everanimate_plp", "everanimate_identity_views_1", "everanimate_motion_latents_2", "everanimate_no_memory_augmentation")],
)
def test_a_variant_changes_a_real_scale_experiment_as_it_changes_the_tiny_one(real, tiny, variant, monkeypatch):
    from omegaconf import OmegaConf

    monkeypatch.setenv("ANIMATE_DATA", "/shards")
    with initialize_config_dir(config_dir=CONF, version_base=None):
        changes = OmegaConf.load(Path(CONF) / "variant" / f"{variant}.yaml")  # the paper row's keys, none overridden by the real-scale values
        for conf in (real, tiny):
            cfg = compose(conf, overrides=[f"variant={variant}"])
            for key, value in _leaves(OmegaConf.to_container(changes)):
                assert OmegaConf.select(cfg, key) == value, (conf, key)


def _leaves(tree: dict, prefix: str = ""):
    """(dotted key, value) of a nested dict's leaves."""
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def test_the_gpu_trainer_presets_state_their_strategy_and_precision():
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    trainers = {}
    for name in ("gpu", "gpu_bf16", "gpu_offload", "deepspeed", "fsdp"):
        with initialize_config_dir(config_dir=CONF, version_base=None):
            trainers[name] = compose("frameprompt", overrides=[f"trainer={name}"]).trainer
    assert trainers["gpu"].precision == "bf16-mixed" and trainers["gpu_bf16"].precision == trainers["gpu_offload"].precision == "bf16-true"
    assert trainers["gpu_offload"].strategy._target_ == "animate.parallel.BlockOffloadStrategy"
    assert trainers["deepspeed"].strategy.stage == 2 and trainers["deepspeed"].strategy.exclude_frozen_parameters
    for name in ("gpu_offload", "deepspeed", "fsdp"):  # no DDP keys merged into another strategy's arguments
        assert "broadcast_buffers" not in trainers[name].strategy, name
    fsdp = trainers["fsdp"].strategy
    assert fsdp._target_ == "lightning.pytorch.strategies.FSDPStrategy"
    policy = instantiate(fsdp.auto_wrap_policy)
    assert isinstance(policy, ModuleWrapPolicy) and {c.__name__ for c in policy._module_classes} == {"WanAttention", "FeedForward"}


@pytest.mark.parametrize(("conf", "mode", "shift", "weighting"), [
    ("real/unianimate", "uniform", 5.0, "bell"),  # DiffSynth's training: uniform over a shift-5 schedule, bell-shaped weights
    ("real/everanimate", "uniform", 5.0, "bell"),
    ("real/onetoall", "logit_normal", 1.0, "none"),  # the official One-to-All code: logit-normal(0, 1), shift 1
])
def test_real_scale_training_times_are_the_official_codes(conf, mode, shift, weighting, monkeypatch):
    monkeypatch.setenv("ANIMATE_DATA", "/shards")
    with initialize_config_dir(config_dir=CONF, version_base=None):
        sampling = compose(conf, overrides=WEIGHTS_FROM_ARCHITECTURE).method.time_sampling
    assert (sampling.mode, sampling.shift, sampling.loss_weighting) == (mode, shift, weighting)
