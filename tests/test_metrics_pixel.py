"""PSNR, masked PSNR, F-PSNR, SSIM and masked SSIM against closed forms and scikit-image."""

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from common.pose.faces import face_boxes
from metrics.pixel import PSNR, SSIM, BackgroundPSNR, FacePSNR, MaskedPSNR, MaskedSSIM, masked_frame_ssim, ssim_disco, ssim_gaussian


def textured(seed: int, shape=(2, 3, 4, 40, 48)) -> tuple[torch.Tensor, torch.Tensor]:
    """A random clip batch and a noisy copy, float in [0, 1]."""
    generator = torch.Generator().manual_seed(seed)
    target = torch.rand(shape, generator=generator)
    generated = (target + 0.1 * torch.randn(shape, generator=generator)).clamp(0, 1)
    return generated, target


def face_keypoints(batch: int, frames: int, box=(10.0, 12.0, 30.0, 28.0), confidence=0.9) -> torch.Tensor:
    """COCO-WholeBody keypoints ``(B, T, 133, 3)`` whose 68 face points span ``box`` (x0, y0, x1, y1)."""
    keypoints = torch.zeros(batch, frames, 133, 3)
    x0, y0, x1, y1 = box
    keypoints[..., 23:91, 0] = torch.linspace(x0, x1, 68)
    keypoints[..., 23:91, 1] = torch.linspace(y0, y1, 68)
    keypoints[..., 23:91, 2] = confidence
    return keypoints


def test_psnr_of_a_constant_offset_is_40_db():
    target = torch.rand(2, 3, 5, 16, 16) * 0.9
    metric = PSNR()
    metric.update(target + 0.01, target)
    assert metric.compute().item() == pytest.approx(40.0, abs=1e-4)
    assert metric.last_clip_values.shape == (2,)


def test_psnr_averages_per_frame_values_then_clips_without_pooling_the_mse():
    target = torch.zeros(1, 3, 2, 8, 8)
    generated = target.clone()
    generated[:, :, 0] += 0.1  # frame 0: MSE 1e-2 -> 20 dB
    generated[:, :, 1] += 0.01  # frame 1: MSE 1e-4 -> 40 dB
    long_clip = torch.full((1, 3, 4, 8, 8), 0.001)  # MSE 1e-6 -> 60 dB
    metric = PSNR()
    metric.update(generated, target)
    metric.update(long_clip, torch.zeros_like(long_clip))
    assert metric.compute().item() == pytest.approx(((20 + 40) / 2 + 60) / 2, abs=1e-4)


def test_psnr_of_identical_frames_is_capped_at_100_db():
    video = torch.rand(1, 3, 2, 8, 8)
    metric = PSNR()
    metric.update(video, video)
    assert metric.compute().item() == 100.0


def test_uint8_input_equals_its_float_value():
    generated, target = textured(0)
    to_u8 = lambda x: (x * 255).round().to(torch.uint8)  # noqa: E731
    for metric_class in (PSNR, SSIM):
        from_float, from_uint8 = metric_class(), metric_class()
        from_float.update(to_u8(generated).float() / 255, to_u8(target).float() / 255)
        from_uint8.update(to_u8(generated), to_u8(target))
        assert from_uint8.compute().item() == pytest.approx(from_float.compute().item(), abs=1e-9)


def test_frame_chunk_does_not_change_the_result():
    generated, target = textured(1, shape=(2, 3, 7, 24, 24))
    values = []
    for chunk in (1, 3, 16):
        metric = SSIM(frame_chunk=chunk)
        metric.update(generated, target)
        values.append(metric.compute().item())
    assert values == pytest.approx([values[0]] * 3, abs=1e-12)


@pytest.mark.parametrize("mode", ["gaussian", "disco"])
def test_ssim_of_identical_frames_is_1(mode):
    video = torch.rand(1, 3, 2, 32, 32)
    metric = SSIM(mode=mode)
    metric.update(video, video)
    assert metric.compute().item() == pytest.approx(1.0, abs=1e-12)


def test_ssim_of_two_constant_images_matches_the_closed_form():
    a, b = 0.3, 0.7
    c1 = 0.01**2
    expected = (2 * a * b + c1) / (a * a + b * b + c1)
    constant = lambda value: torch.full((1, 3, 20, 20), value, dtype=torch.float64)  # noqa: E731
    value = ssim_gaussian(constant(a), constant(b))
    assert value.item() == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ssim_gaussian_equals_scikit_image(seed):
    generated, target = textured(seed, shape=(1, 3, 1, 37, 53))
    ours = ssim_gaussian(generated[:, :, 0], target[:, :, 0]).item()
    reference = structural_similarity(
        generated[0, :, 0].double().numpy(),
        target[0, :, 0].double().numpy(),
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        data_range=1.0,
        channel_axis=0,
    )
    assert ours == pytest.approx(reference, abs=1e-6)


def test_ssim_disco_equals_scikit_image_defaults_on_8_bit_gray():
    generated, target = textured(3, shape=(1, 1, 1, 33, 41))
    gray_generated = (generated[0, 0, 0] * 255).round().to(torch.uint8)
    gray_target = (target[0, 0, 0] * 255).round().to(torch.uint8)
    as_rgb = lambda gray: (gray.double() / 255).expand(1, 3, -1, -1)  # noqa: E731  R = G = B: gray is itself
    ours = ssim_disco(as_rgb(gray_generated), as_rgb(gray_target)).item()
    reference = structural_similarity(gray_generated.numpy(), gray_target.numpy())
    assert ours == pytest.approx(reference, abs=1e-9)
    assert ours != pytest.approx(ssim_gaussian(as_rgb(gray_generated), as_rgb(gray_target)).item(), abs=1e-3)


def test_ssim_refuses_frames_smaller_than_the_window():
    with pytest.raises(ValueError, match="at least 11x11"):
        SSIM().update(torch.rand(1, 3, 1, 8, 8), torch.rand(1, 3, 1, 8, 8))


def test_mismatched_shapes_are_refused_with_both_shapes():
    with pytest.raises(ValueError, match=r"\(1, 3, 2, 16, 16\).*\(1, 3, 3, 16, 16\)"):
        PSNR().update(torch.rand(1, 3, 2, 16, 16), torch.rand(1, 3, 3, 16, 16))


def test_masked_psnr_sees_only_the_mask_and_skips_empty_frames():
    target = torch.zeros(1, 3, 3, 16, 16)
    generated = target.clone()
    generated[..., :8, :] = 0.01  # error inside the mask: 40 dB
    generated[..., 8:, :] = 0.5  # large error outside it
    mask = torch.zeros(1, 3, 16, 16, dtype=torch.bool)
    mask[:, :2, :8, :] = True  # frame 2 has an empty mask
    metric = MaskedPSNR()
    metric.update(generated, target, person_mask=mask)
    result = metric.compute()
    assert result["psnr_mask"].item() == pytest.approx(40.0, abs=1e-4)
    assert result["skipped_frames"].item() == 1
    with pytest.raises(ValueError, match="person_mask"):
        MaskedPSNR().update(generated, target)


def test_background_psnr_sees_only_the_pixels_outside_the_mask():
    target = torch.zeros(1, 3, 2, 16, 16)
    generated = target.clone()
    generated[..., :8, :] = 0.5  # large error on the person
    generated[..., 8:, :] = 0.01  # 40 dB on the scene
    mask = torch.zeros(1, 2, 16, 16, dtype=torch.bool)
    mask[:, :, :8, :] = True
    metric = BackgroundPSNR()
    metric.update(generated, target, person_mask=mask)
    assert metric.compute()["psnr_background"].item() == pytest.approx(40.0, abs=1e-4)


def test_masked_ssim_is_skimage_s_map_averaged_inside_the_mask():
    generated, target = textured(3, shape=(1, 3, 1, 40, 48))
    mask = torch.zeros(1, 40, 48, dtype=torch.bool)
    mask[:, 8:30, 12:40] = True
    _, full_map = structural_similarity(
        generated[0, :, 0].permute(1, 2, 0).double().numpy(), target[0, :, 0].permute(1, 2, 0).double().numpy(),
        gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0, channel_axis=-1, full=True,
    )  # (H, W, 3), the border of 5 pixels padded
    expected = full_map.mean(axis=-1)[mask[0].numpy()].mean()  # the mask lies inside the valid region here
    got = masked_frame_ssim(generated[:, :, 0], target[:, :, 0], mask)
    assert got.item() == pytest.approx(expected, abs=1e-10)


def test_masked_ssim_with_a_full_mask_is_ssim_and_skips_empty_frames():
    generated, target = textured(4, shape=(2, 3, 3, 32, 32))
    full = torch.ones(2, 3, 32, 32, dtype=torch.bool)
    frames = lambda video: video.transpose(1, 2).flatten(0, 1)  # (B*T, 3, H, W)
    torch.testing.assert_close(masked_frame_ssim(frames(generated), frames(target), full.flatten(0, 1)), ssim_gaussian(frames(generated), frames(target)))
    identical = MaskedSSIM()
    mask = full.clone()
    mask[:, 2] = False  # one empty frame per clip
    identical.update(target, target, person_mask=mask)
    result = identical.compute()
    assert result["ssim_mask"].item() == pytest.approx(1.0) and result["skipped_frames"].item() == 2
    with pytest.raises(ValueError, match="person_mask"):
        MaskedSSIM().update(generated, target)


def test_face_box_follows_wan_animate_rule():
    keypoints = face_keypoints(1, 1, box=(10.0, 20.0, 30.0, 60.0))[0]
    boxes, valid = face_boxes(keypoints, height=100, width=100)
    grow = 1.3**0.5 - 1  # width 20, height 40 grow by this fraction of themselves
    expected = [int(10 - 20 * grow / 2), int(20 - 40 * grow * 3 / 4), int(30 + 20 * grow / 2), int(60 + 40 * grow / 4)]
    assert valid.tolist() == [True]
    assert boxes[0].tolist() == expected


def test_face_box_ignores_low_confidence_points_and_clips_to_the_frame():
    keypoints = face_keypoints(1, 1, box=(0.0, 0.0, 20.0, 20.0))[0]
    keypoints[:, 60:91, 2] = 0.2  # below 0.3: the box shrinks to the confident points
    boxes, valid = face_boxes(keypoints, height=100, width=100)
    assert valid.item()
    assert boxes[0, :2].tolist() == [0, 0]
    assert boxes[0, 2].item() < 20


def test_fpsnr_measures_inside_the_face_box_and_counts_faceless_frames():
    target = torch.zeros(1, 3, 3, 48, 48)
    generated = torch.full_like(target, 0.5)  # large error everywhere ...
    generated[..., 5:35, 5:35] = 0.01  # ... except around the face: 40 dB there
    keypoints = face_keypoints(1, 3, box=(12.0, 14.0, 28.0, 30.0))
    keypoints[:, 1, :, 2] = 0.1  # frame 1: no confident face point
    metric = FacePSNR()
    metric.update(generated, target, keypoints=keypoints)
    result = metric.compute()
    assert result["fpsnr"].item() == pytest.approx(40.0, abs=1e-4)
    assert result["skipped_frames"].item() == 1
    assert result["skipped_clips"].item() == 0


def test_fpsnr_skips_a_clip_without_any_face():
    video = torch.rand(2, 3, 2, 32, 32)
    keypoints = face_keypoints(2, 2, confidence=0.0)
    metric = FacePSNR()
    metric.update(video, video * 0.5, keypoints=keypoints)
    result = metric.compute()
    assert torch.isnan(result["fpsnr"])
    assert (result["skipped_clips"].item(), result["skipped_frames"].item()) == (2, 4)
    assert torch.isnan(metric.last_clip_values).all()


def test_fpsnr_needs_133_keypoints():
    video = torch.rand(1, 3, 1, 32, 32)
    with pytest.raises(ValueError, match="133"):
        FacePSNR().update(video, video, keypoints=torch.zeros(1, 1, 18, 3))
    with pytest.raises(ValueError, match="keypoints"):
        FacePSNR().update(video, video)


def test_psnr_matches_the_numpy_definition():
    generated, target = textured(4, shape=(1, 3, 3, 16, 16))
    metric = PSNR()
    metric.update(generated, target)
    mse = ((generated - target).double().numpy() ** 2).mean(axis=(0, 1, 3, 4))
    assert metric.compute().item() == pytest.approx(np.mean(-10 * np.log10(mse)), abs=1e-6)


def test_extras_that_do_not_match_the_video_are_refused():
    video = torch.rand(1, 3, 4, 32, 32)
    with pytest.raises(ValueError, match=r"keypoints \(1, 3, 133, 3\) do not match"):
        FacePSNR().update(video, video, keypoints=torch.zeros(1, 3, 133, 3))
    with pytest.raises(ValueError, match=r"person_mask \(1, 4, 16, 16\) is not"):
        MaskedPSNR().update(video, video, person_mask=torch.ones(1, 4, 16, 16, dtype=torch.bool))


def test_float_videos_outside_0_1_are_refused():
    video = torch.rand(1, 3, 2, 16, 16)
    with pytest.raises(ValueError, match=r"must be in \[0, 1\].*\(x \+ 1\) / 2"):
        PSNR().update(video * 2 - 1, video)
