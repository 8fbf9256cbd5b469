"""EverAnimate: memory layout, restorative flow matching, memory augmentation and the drift perturbation."""

import pytest
import torch

from animate.methods.base import AnimationSystem
from animate.methods.everanimate import augment_views, face_crops
from animate.restorative_flow import DriftPerturbation, restoration_coefficient, restorative_target

from tiny_systems import everanimate, everanimate_on_animate, face_keypoints, fake_batch


def batch_with_views(b=2, t=9, views=1):
    """A fabricated batch of ``t`` frames (3 latent frames) with ``views`` extra identity views."""
    batch = fake_batch(b=b, t=t)
    batch["reference_views"] = torch.rand(b, views, *batch["reference"].shape[1:]) * 2 - 1
    return batch


def training_sequence(system, batch, continuation=True):
    """The training layout of ``batch``: a continuation chunk (or a first chunk)."""
    system.first_chunk_probability = 0.0 if continuation else 1.0
    system.train()
    latents = system.encode(batch, system.latent_inputs(training=True))
    return system.build_sequence(batch, latents, {}, training=True), latents


def test_memory_frames_are_clean_at_t0_and_carry_no_loss():
    system = everanimate()
    seq, latents = training_sequence(system, batch_with_views())
    n = system.context_frames  # K = 2 identity + L_m = 1 motion
    assert n == 3 and seq.target == slice(3, 3 + latents["video"].shape[2] - 2)
    t = torch.full((2,), 0.7)
    assert torch.all(seq.frame_times(t)[:, :n] == 0) and torch.all(seq.frame_times(t)[:, n:] == 0.7)
    assert torch.all(seq.loss_weight[:, :, :n] == 0) and torch.all(seq.loss_weight[:, :, n:] > 0)
    pair = system.flow_pair(seq, torch.randn_like(seq.clean), t)
    assert torch.equal(pair.model_input[:, :, :n], seq.clean[:, :, :n])  # memory enters clean


def test_continuation_cuts_the_clip_into_motion_memory_and_target():
    system = everanimate(motion_noise=0.0)  # the motion memory as the clip has it (stage 2; stage 1 noises it)
    seq, latents = training_sequence(system, batch_with_views())
    video, k = latents["video"], system.identity_views
    assert torch.equal(seq.clean[:, :, k : k + 1], video[:, :, 1:2])  # motion memory = latent frame 1
    assert torch.equal(seq.clean[:, :, k + 1 :], video[:, :, 2:])  # target = the rest
    first, _ = training_sequence(system, batch_with_views(), continuation=False)
    assert torch.all(first.clean[:, :, k : k + 1] == 0)  # first chunk: the null motion memory ...
    assert torch.equal(first.clean[:, :, 1:k], first.clean[:, :, :1].expand(-1, -1, k - 1, -1, -1))  # ... and the reference alone
    assert first.clean.shape[2] == k + 1 + video.shape[2]


def test_identity_memory_at_inference_is_the_views_then_the_reference_last_each_encoded_alone():
    system = everanimate().eval()  # K = 2: one view, then the reference (official order)
    batch = batch_with_views(views=2)
    latents = system.encode(batch, system.latent_inputs(training=False))
    seq = system.build_sequence(batch, latents, {}, training=False)
    reference = system.backbone.vae.encode(batch["reference"][:, :, None])
    view = system.backbone.vae.encode(batch["reference_views"][:, 0, :, None])
    assert torch.allclose(seq.clean[:, :, 0:1], view, atol=1e-5) and torch.allclose(seq.clean[:, :, 1:2], reference, atol=1e-5)
    del batch["reference_views"]  # no views given: the reference fills the memory
    latents = system.encode(batch, system.latent_inputs(training=False))
    seq = system.build_sequence(batch, latents, {}, training=False)
    assert torch.allclose(seq.clean[:, :, 0:1], reference, atol=1e-5) and torch.allclose(seq.clean[:, :, 1:2], reference, atol=1e-5)


@torch.no_grad()
def test_the_frozen_identity_memory_is_views_of_the_first_chunk_then_the_reference_last():
    system = everanimate(identity_views=4).eval()
    batch = fake_batch(b=1, t=9)
    video = torch.linspace(-0.9, 0.9, 9).view(1, 1, 9, 1, 1).expand(1, 3, 9, *batch["reference"].shape[2:]).contiguous()  # frame i: one grey level
    memory = system.after_first_chunk(batch, video, seed=0)["identity_memory"]  # (1, C, 4, h, w)
    encode = lambda pixels: system.backbone.vae.encode(pixels[:, :, None])[:, :, 0]
    assert torch.allclose(memory[:, :, 3], encode(batch["reference"]), atol=1e-5)
    frames = [min(range(1, 9), key=lambda i: (encode(video[:, :, i]) - memory[:, :, slot]).abs().max()) for slot in range(3)]
    assert frames == sorted(frames) and len(set(frames)) == 3  # three distinct frames after frame 0, in time order


def test_at_initialisation_the_pose_path_adds_nothing():
    system = everanimate().eval()
    batch = batch_with_views()
    seq, _ = training_sequence(system, batch)
    system.eval()
    x, t = torch.randn_like(seq.clean), seq.frame_times(torch.full((2,), 0.5))
    with torch.no_grad():
        with_pose = system(seq, x, t)
        seq.injections = {}
        without = system(seq, x, t)
    assert torch.equal(with_pose, without)


def test_rfm_without_perturbation_is_plain_flow_matching_exactly():
    system = everanimate(restorative=dict(enabled=True))
    seq, _ = training_sequence(system, batch_with_views())
    seq.perturbed = seq.clean.clone()
    noise, t = torch.randn_like(seq.clean), torch.rand(2)
    rfm = system.flow_pair(seq, noise, t)
    plain = AnimationSystem.flow_pair(system, seq, noise, t)
    assert torch.equal(rfm.model_input, plain.model_input) and torch.equal(rfm.target, plain.target)


def test_rfm_input_is_the_perturbed_interpolant_and_its_target_pulls_back():
    system = everanimate(restorative=dict(enabled=True, amplitude=1.0, mean=0.5, std=0.5))
    seq, _ = training_sequence(system, batch_with_views())
    seq.perturbed = seq.clean + 0.3
    n = system.context_frames
    seq.perturbed[:, :, :n] = seq.clean[:, :, :n]
    noise, t = torch.randn_like(seq.clean), torch.full((2,), 0.5)
    pair = system.flow_pair(seq, noise, t)
    assert torch.allclose(pair.model_input[:, :, n:], 0.5 * seq.perturbed[:, :, n:] + 0.5 * noise[:, :, n:])
    assert torch.allclose(pair.target[:, :, n:], (noise - seq.clean)[:, :, n:] + 1.0 * 0.3, atol=1e-5)  # w(mu) = a


def test_the_bell_is_min_max_normalised_zero_at_both_ends_and_a_at_its_mean():
    t = torch.tensor([0.0, 0.5, 1.0])
    for form in ("paper", "official"):
        coefficient = restoration_coefficient(t, amplitude=0.7, mean=0.5, std=0.5, form=form)
        torch.testing.assert_close(coefficient, torch.tensor([0.0, 0.7 if form == "paper" else 0.35, 0.0]))
    raw = restoration_coefficient(t, 1.0, 0.5, 0.5, "paper", normalised=False)  # the plain Gaussian: exp(-1/2) at the ends
    torch.testing.assert_close(raw, torch.tensor([0.6065, 1.0, 0.6065]), atol=1e-4, rtol=0)


def test_rfm_restores_only_draws_at_or_above_min_time():
    system = everanimate(restorative=dict(enabled=True, min_time=0.5))
    seq, _ = training_sequence(system, batch_with_views())
    n = system.context_frames
    seq.perturbed = seq.clean.clone()
    seq.perturbed[:, :, n:] += 0.3
    noise, t = torch.randn_like(seq.clean), torch.tensor([0.3, 0.6])
    pair = system.flow_pair(seq, noise, t)
    plain = AnimationSystem.flow_pair(system, seq, noise, t)
    assert torch.equal(pair.model_input[0], plain.model_input[0]) and torch.equal(pair.target[0], plain.target[0])  # t < 0.5: plain FM
    assert not torch.allclose(pair.target[1], plain.target[1])  # t >= 0.5: restored


def test_rfm_target_stays_bounded_as_t_goes_to_zero():
    t = torch.tensor([[1e-6, 1e-3, 0.5, 1.0]])
    for form in ("paper", "official"):
        coefficient = restoration_coefficient(t, amplitude=1.0, mean=0.5, std=0.5, form=form)
        assert torch.all(coefficient <= 1.0) and torch.all(coefficient >= 0)
    exact = (1 - t) / t  # the unbounded constant-velocity coefficient RFM replaces
    assert exact[0, 0] > 1e5
    clean, noise = torch.zeros(1, 1, 4, 1, 1), torch.zeros(1, 1, 4, 1, 1)
    target = restorative_target(clean, clean + 1, noise, restoration_coefficient(t, 1.0, 0.5, 0.5))
    assert torch.all(target.abs() <= 1.0)


def test_official_form_is_v_clean_plus_alpha_times_the_state_gap():
    t = torch.rand(2, 3)
    clean, perturbed, noise = torch.randn(2, 4, 3, 2, 2), torch.randn(2, 4, 3, 2, 2), torch.randn(2, 4, 3, 2, 2)
    steps = torch.linspace(0, 1, 1001)
    g = torch.exp(-2 * (steps - 0.5) ** 2)
    alpha = (torch.exp(-2 * (t - 0.5) ** 2) - g.min()) / (g.max() - g.min())  # the official gaussian_timestep
    frames = lambda x: x[:, None, :, None, None]
    x_t, x_t_aug = (1 - frames(t)) * clean + frames(t) * noise, (1 - frames(t)) * perturbed + frames(t) * noise
    official = noise - clean + frames(alpha) * (x_t_aug - x_t)
    ours = restorative_target(clean, perturbed, noise, restoration_coefficient(t, 1.0, 0.5, 0.5, form="official"))
    assert torch.allclose(ours, official, atol=1e-5)


def test_drift_perturbation_changes_pixels_within_range_and_can_be_off():
    video = torch.rand(2, 3, 5, 16, 16) * 2 - 1
    g = torch.Generator().manual_seed(0)
    out = DriftPerturbation(color_shift=0.2, sharpness=0.5, saturation=0.5)(video, g)
    assert out.shape == video.shape and out.min() >= -1 and out.max() <= 1 and not torch.allclose(out, video)
    off = DriftPerturbation(color_shift=0, sharpness=0, saturation=0)
    assert off.identity and torch.equal(off(video), video)
    with pytest.raises(ValueError, match="saturation"):
        DriftPerturbation(saturation=-1)


def test_memory_augmentation_moves_all_views_of_a_sample_by_one_map():
    view = torch.rand(1, 1, 3, 32, 32) * 2 - 1
    views = view.expand(8, 3, -1, -1, -1).contiguous()  # every sample: one image three times
    moved = augment_views(views, probability=1.0, scale=(0.8, 1.2), translate=0.1, fill=0.0, generator=torch.Generator().manual_seed(0))
    assert moved.shape == views.shape and not torch.allclose(moved, views)
    assert torch.equal(moved[:, 0], moved[:, 1]) and torch.equal(moved[:, 0], moved[:, 2])  # shared by the sample's views
    assert not torch.allclose(moved[0], moved[1])  # drawn anew per sample
    assert torch.equal(augment_views(views, 0.0, (0.8, 1.2), 0.1, 0.0), views)


def test_memory_augmentation_is_the_official_affine_grid_map():
    views = torch.rand(1, 1, 3, 16, 16) * 2 - 1
    moved = augment_views(views, 1.0, (1.2, 1.2), 0.0, 0.0)  # s = 1.2, no shift: the view shrinks about the centre
    theta = torch.tensor([[[1.2, 0.0, 0.0], [0.0, 1.2, 0.0]]])
    grid = torch.nn.functional.affine_grid(theta, [1, 3, 16, 16], align_corners=False)
    expected = torch.nn.functional.grid_sample(views[0], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    torch.testing.assert_close(moved[0], expected)


def test_memory_augmentation_fills_outside_the_view_with_the_fill_value():
    white = torch.ones(1, 2, 3, 16, 16)
    for fill in (0.0, -1.0):  # official: 0, mid-grey on [-1, 1] pixels
        moved = augment_views(white, 1.0, (1.2, 1.2), 0.0, fill)
        assert torch.all(moved[..., 0, 0] == fill) and torch.all(moved[..., 8, 8] == 1.0)


def test_memory_augmentation_moves_a_share_probability_of_the_samples():
    views = (torch.rand(1, 2, 3, 16, 16) * 2 - 1).expand(400, -1, -1, -1, -1)
    moved = augment_views(views, 0.5, (0.8, 1.2), 0.1, 0.0, generator=torch.Generator().manual_seed(0))
    changed = (moved != views).flatten(1).any(dim=1).float().mean()
    assert 0.42 < changed < 0.58


def test_training_identity_memory_is_the_views_or_with_its_probability_the_reference_alone():
    system = everanimate(identity_views=2, reference_memory_probability=0.0)
    batch = batch_with_views(b=16, views=2)  # as many views as slots: no reference in the memory (official)
    system.train()
    latents = system.encode(batch, system.latent_inputs(training=True))
    reference = latents["identity"][:, :, 0].unflatten(0, (16, -1))[:, 0]  # (B, C, h, w)
    views = latents["identity"][:, :, 0].unflatten(0, (16, -1))[:, 1:3].transpose(1, 2)  # (B, C, 2, h, w)
    memory = system.identity_memory(batch, latents, "training")
    assert torch.equal(memory, views)
    system.reference_memory_probability = 1.0
    assert torch.equal(system.identity_memory(batch, latents, "training"), reference[:, :, None].expand(-1, -1, 2, -1, -1))
    system.reference_memory_probability = 0.5
    torch.manual_seed(0)
    memory = system.identity_memory(batch, latents, "training")
    alone = torch.tensor([torch.equal(memory[i], reference[i, :, None].expand(-1, 2, -1, -1)) for i in range(16)])
    assert alone.any() and not alone.all()  # drawn per sample
    system.eval()  # the validation loss: always the views
    assert torch.equal(system.identity_memory(batch, latents, "training"), views)


def test_settings_that_cannot_work_are_rejected():
    with pytest.raises(ValueError, match="restorative.std"):
        everanimate(restorative=dict(std=0))
    with pytest.raises(ValueError, match="form"):
        everanimate(restorative=dict(form="other"))
    with pytest.raises(ValueError, match="identity_views"):
        everanimate(identity_views=0)
    with pytest.raises(ValueError, match="restorative.min_time"):
        everanimate(restorative=dict(min_time=2))
    with pytest.raises(ValueError, match="memory_augmentation.scale"):
        everanimate(memory_augmentation=dict(scale=[1.2, 0.8]))
    with pytest.raises(ValueError, match="loss_weighting"):
        everanimate(time_sampling=dict(loss_weighting="other"))


def with_faces(batch):
    """Per-frame keypoints with a face in every frame."""
    b, _, t, h, w = batch["pose"].shape
    return batch | {"keypoints": face_keypoints(b, h, w)[:, None].expand(b, t, 133, 3).clone()}


def test_on_an_animate_backbone_memory_enters_y_and_faces_drive_the_face_adapter():
    system = everanimate_on_animate()
    batch = with_faces(batch_with_views())
    seq, latents = training_sequence(system, batch)
    n = system.context_frames
    assert seq.channel_cond.shape[1] == 20 and torch.all(seq.channel_cond[:, :4, :n] == 1) and torch.all(seq.channel_cond[:, :, n:] == 0)
    torch.testing.assert_close(seq.channel_cond[:, 4:, :n], seq.clean[:, :, :n])
    assert seq.face_motion.shape[:2] == (2, seq.clean.shape[2]) and torch.all(seq.face_motion[:, :n] == 0)
    loss = system.loss(batch)
    loss.backward()
    assert torch.isfinite(loss) and system.backbone.transformer.face_adapter[0].to_out.weight.grad.abs().sum() > 0


@torch.no_grad()
def test_face_crops_follow_the_face_box_and_are_zero_without_a_face():
    frames = torch.zeros(1, 3, 2, 32, 32)
    frames[:, :, :, 4:12, 10:18] = 1.0  # a bright face square
    keypoints = torch.zeros(1, 2, 133, 3)
    keypoints[0, 0, 23:91] = torch.tensor([14.0, 8.0, 1.0])
    keypoints[0, 0, 23, :2], keypoints[0, 0, 24, :2] = torch.tensor([11.0, 5.0]), torch.tensor([17.0, 11.0])
    crops = face_crops(frames, keypoints, size=8)
    assert crops.shape == (1, 3, 2, 8, 8) and crops[0, :, 0].mean() > 0.5
    assert torch.all(crops[0, :, 1] == 0)  # no face points in frame 1


def test_rfm_training_encodes_only_the_clips_p_perturbs():
    system = everanimate(restorative=dict(enabled=True, perturbation=dict(probability=0.5, color_shift=0.5)))
    system.train()
    torch.manual_seed(3)
    batch = batch_with_views(b=6)
    latents = system.encode(batch, system.latent_inputs(training=True))
    same = [torch.equal(latents["perturbed"][i], latents["video"][i]) for i in range(6)]
    assert any(same) and not all(same)  # unperturbed clips reuse x0's latents, perturbed ones were encoded from P(x0)
    system.eval()
    assert "perturbed" not in system.encode(batch, system.latent_inputs(training=True))  # the validation loss is plain FM


def diffsynth_training_weights(shift: float) -> tuple[torch.Tensor, torch.Tensor]:
    """DiffSynth's FlowMatchScheduler (template Wan) in training mode: its 1000 sigmas and their loss weights, re-derived."""
    sigmas = torch.linspace(1.0, 0.0, 1001, dtype=torch.float64)[:-1]
    sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
    y = torch.exp(-2 * ((sigmas * 1000 - 500) / 1000) ** 2)
    return sigmas, (y - y.min()) * (1000 / (y - y.min()).sum())


def test_bell_loss_weighting_is_diffsynths_training_weight():
    from animate.flow import training_weight

    sigmas, weights = diffsynth_training_weights(5.0)
    torch.testing.assert_close(training_weight(sigmas, "bell", shift=5.0), weights)
    assert abs(float(training_weight(sigmas, "bell", shift=5.0).mean()) - 1.0) < 1e-9 and torch.equal(training_weight(sigmas), torch.ones_like(sigmas))


def test_the_bell_weight_scales_each_samples_loss_and_is_not_normalised_away():
    from animate.flow import training_weight

    batch = batch_with_views(b=1)
    sampling = dict(mode="uniform", shift=5.0)
    plain = everanimate(time_sampling=sampling).eval()
    weighted = everanimate(time_sampling=sampling | dict(loss_weighting="bell")).eval()
    weighted.load_state_dict(plain.state_dict())
    t = torch.rand(1, generator=torch.Generator().manual_seed(7))
    t = 5 * t / (1 + 4 * t)  # the time both losses draw with this seed
    with torch.no_grad():
        expected = plain.loss(batch, torch.Generator().manual_seed(7)) * training_weight(t, "bell", 5.0)
        torch.testing.assert_close(weighted.loss(batch, torch.Generator().manual_seed(7)), expected[0])


def compose_everanimate(conf: str, monkeypatch):
    """The composed config of ``conf`` (e.g. real/everanimate_stage2)."""
    from pathlib import Path

    from hydra import compose, initialize_config_dir

    monkeypatch.setenv("ANIMATE_DATA", "/shards")
    with initialize_config_dir(config_dir=str(Path(__file__).resolve().parent.parent / "conf"), version_base=None):
        return compose(conf)


@pytest.mark.parametrize("conf", ["real/everanimate", "real/everanimate_stage1", "real/everanimate_stage2"])
def test_paper_scale_trains_as_the_official_code(conf, monkeypatch):
    method = compose_everanimate(conf, monkeypatch).method
    sampling = method.time_sampling
    assert sampling.mode == "uniform" and sampling.shift == 5.0 and sampling.loss_weighting == "bell"
    assert method.restorative.min_time == 0.5 and method.restorative.perturbation.probability == 0.64
    assert method.reference_memory_probability == 0.05 and method.first_chunk_probability == 0.2
    aug = method.memory_augmentation
    assert list(aug.scale) == [0.8, 1.2] and aug.translate == 0.1 and aug.fill == 0.0
    assert aug.probability == (0.0 if conf.endswith("stage1") else 0.5)  # official: stage 2 only
    assert compose_everanimate(conf, monkeypatch).data.reference_views == 4


def test_the_tiny_stages_augment_the_memory_in_stage_2_only(monkeypatch):
    assert compose_everanimate("everanimate_stage1", monkeypatch).method.memory_augmentation.probability == 0.0
    assert compose_everanimate("everanimate_stage2", monkeypatch).method.memory_augmentation.probability == 0.5
