"""Rectified flow: schedules, loss, Euler sampler, cumulative CFG."""

import pytest
import torch

from animate.flow import (
    SCHEDULES,
    euler_sample,
    flow_loss,
    guidance_weights,
    guided_velocity,
    interpolate,
    sample_estimate,
    sample_time,
    sampling_times,
    shift_time,
    velocity_from_sample,
)


def test_shift_keeps_endpoints_and_pushes_toward_noise():
    t = torch.tensor([0.0, 0.25, 0.5, 1.0])
    shifted = shift_time(t, 3.0)
    assert shifted[0] == 0 and shifted[-1] == 1
    assert torch.all(shifted[1:3] > t[1:3])
    torch.testing.assert_close(shift_time(t, 1.0), t)


@pytest.mark.parametrize("mode", ["uniform", "logit_normal"])
def test_sample_time_range_and_determinism(mode):
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    a, b = sample_time(4096, mode, generator=g1), sample_time(4096, mode, generator=g2)
    assert torch.equal(a, b) and a.min() > 0 and a.max() < 1
    assert abs(a.mean().item() - 0.5) < 0.03  # both are symmetric around 0.5 without shift


def test_logit_normal_concentrates_mid_range():
    t = sample_time(20000, "logit_normal", generator=torch.Generator().manual_seed(0))
    u = sample_time(20000, "uniform", generator=torch.Generator().manual_seed(0))
    mid = lambda x: ((x > 0.25) & (x < 0.75)).float().mean()
    assert mid(t) > mid(u) + 0.1


def test_unknown_sampling_mode_names_the_options():
    with pytest.raises(ValueError, match="uniform"):
        sample_time(2, "cosine")


def test_interpolate_per_frame_time():
    x0, eps = torch.zeros(1, 2, 3, 2, 2), torch.ones(1, 2, 3, 2, 2)
    x = interpolate(x0, eps, torch.tensor([[0.0, 0.5, 1.0]]))
    assert torch.all(x[:, :, 0] == 0) and torch.all(x[:, :, 1] == 0.5) and torch.all(x[:, :, 2] == 1)


def test_flow_loss_weights():
    pred, target = torch.zeros(1, 2, 2, 1, 1), torch.ones(1, 2, 2, 1, 1)
    target[:, :, 1] = 3.0
    only_first = torch.tensor([1.0, 0.0]).view(1, 1, 2, 1, 1)
    assert flow_loss(pred, target, only_first).item() == pytest.approx(1.0)
    assert flow_loss(pred, target, torch.ones(1, 1, 2, 1, 1)).item() == pytest.approx(5.0)
    tripled = torch.tensor([3.0, 1.0]).view(1, 1, 2, 1, 1)  # region weight 3 on frame 0
    assert flow_loss(pred, target, tripled).item() == pytest.approx((3 * 1 + 9) / 4)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_sampling_times_decrease_from_one_to_zero(schedule):
    times = sampling_times(10, shift=5.0, schedule=schedule)
    assert times.shape == (11,) and times[0] == 1 and times[-1] == 0 and torch.all(times[1:] < times[:-1])


def test_diffsynth_schedule_is_diffsynths_flow_match_scheduler():
    # DiffSynth's FlowMatchScheduler(shift, sigma_min=0, extra_one_step=True) as UniAnimate-DiT and EverAnimate build it:
    # sigmas = linspace(1, 0, N + 1)[:-1], shifted once; its last step goes to 0
    steps, shift = 50, 5.0
    sigmas = torch.linspace(1.0, 0.0, steps + 1)[:-1]
    sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
    torch.testing.assert_close(sampling_times(steps, shift, schedule="diffsynth"), torch.cat([sigmas, torch.zeros(1)]))


def test_diffusers_schedule_is_one_to_alls_official_one():
    # One-to-All's FlowMatchEulerDiscreteScheduler(shift=7) at 30 steps (diffusers shifts twice); diffsynth's ends 0.333, 0.194, 0
    times = sampling_times(30, 7.0, schedule="diffusers")
    torch.testing.assert_close(times[-3:], torch.tensor([0.231, 0.047, 0.0]), atol=1e-3, rtol=0)
    torch.testing.assert_close(sampling_times(30, 7.0, schedule="diffsynth")[-3:], torch.tensor([0.333, 0.194, 0.0]), atol=1e-3, rtol=0)


def test_an_unknown_schedule_is_refused_by_name():
    with pytest.raises(ValueError, match="sampler.schedule='ddim'"):
        sampling_times(10, 5.0, schedule="ddim")


def test_euler_recovers_data_with_exact_velocity():
    x0 = torch.randn(2, 3, 4, 2, 2)
    noise = torch.randn_like(x0)

    def exact(x, t):  # straight path to x0: v = (x_t - x0) / t, zero on frames seen at t = 0
        tt = t[:, None, :, None, None].clamp_min(1e-8)
        return torch.where(tt > 0, (x - x0) / tt, torch.zeros_like(x))

    generate = torch.tensor([[False, True, True, True]] * 2)
    start = torch.where(generate[:, None, :, None, None], noise, x0)
    estimates = []
    out = euler_sample(exact, start, generate, steps=7, shift=3.0, schedule="diffsynth", on_step=lambda i, x, t, v: estimates.append((i, sample_estimate(x, t, v))))
    torch.testing.assert_close(out, x0, rtol=1e-4, atol=1e-4)
    # the exact velocity implies the clean latents at every step, which the step callback sees
    assert [i for i, _ in estimates] == list(range(7))
    for _, estimate in estimates:
        torch.testing.assert_close(estimate, x0, rtol=1e-4, atol=1e-4)


def test_a_sample_prediction_of_the_clean_latents_is_the_exact_velocity():
    x0, noise = torch.randn(2, 3, 4, 2, 2), torch.randn(2, 3, 4, 2, 2)
    t = torch.tensor([[0.3, 0.5, 0.9, 1.0], [0.06, 0.2, 0.7, 0.99]])
    v = velocity_from_sample(interpolate(x0, noise, t), x0, t, min_time=0.05)
    torch.testing.assert_close(v, noise - x0, rtol=1e-4, atol=1e-4)
    # below min_time the division is clamped: a bounded velocity instead of (x_t - x0) / 0
    t_zero = torch.zeros(2, 4)
    clamped = velocity_from_sample(x0 + 1.0, x0, t_zero, min_time=0.05)
    torch.testing.assert_close(clamped, torch.full_like(x0, 20.0))


def test_frames_not_generated_see_time_zero():
    seen = []

    def record(x, t):
        seen.append(t.clone())
        return torch.zeros_like(x)

    generate = torch.tensor([[False, True, True]])
    euler_sample(record, torch.randn(1, 2, 3, 2, 2), generate, steps=3, shift=1.0, schedule="diffsynth")
    assert len(seen) == 3 and all(t[0, 0] == 0 and t[0, 1] > 0 for t in seen)


def test_cumulative_cfg_weights_and_passes():
    assert guidance_weights([1.0]) == [0.0, 1.0]  # no guidance: one conditional pass
    assert guidance_weights([1.5]) == [-0.5, 1.5]  # plain CFG
    assert guidance_weights([1.0, 1.0]) == [0.0, 0.0, 1.0]  # Eq. 16, lP = lI = 1: one pass
    assert guidance_weights([1.5, 1.5]) == [-0.5, 0.0, 1.5]  # lP = lI: two passes
    assert guidance_weights([2.0, 3.0]) == [-1.0, -1.0, 3.0]  # lP != lI: three passes


def test_guided_velocity_matches_eq16_in_one_batched_call():
    x_u, x_p, x_rp = torch.full((1, 1, 1, 1, 1), 1.0), torch.full((1, 1, 1, 1, 1), 2.0), torch.full((1, 1, 1, 1, 1), 4.0)
    preds = [x_u, x_p, x_rp]
    calls = []

    def fn(x, t, levels):
        calls.append(list(levels))
        return torch.cat([preds[i] for i in levels])

    lp, li = 2.0, 3.0
    v = guided_velocity(fn, torch.zeros(1, 1, 1, 1, 1), torch.zeros(1, 1), [lp, li])
    expected = x_u + lp * (x_p - x_u) + li * (x_rp - x_p)
    torch.testing.assert_close(v, expected)
    assert calls == [[0, 1, 2]]
    calls.clear()
    guided_velocity(fn, torch.zeros(1, 1, 1, 1, 1), torch.zeros(1, 1), [1.5, 1.5])
    assert calls == [[0, 2]]


def test_cosine_with_warmup_rises_then_decays_to_its_floor():
    from animate.schedules import constant_with_warmup, cosine_with_warmup

    factor = cosine_with_warmup(total_steps=110, warmup_steps=10, final=0.05)
    assert factor(0) == pytest.approx(0.1) and factor(9) == pytest.approx(1.0)
    assert factor(10) == pytest.approx(1.0) and factor(60) == pytest.approx(0.525) and factor(110) == pytest.approx(0.05)
    assert factor(500) == pytest.approx(0.05)
    assert all(factor(s) >= factor(s + 1) for s in range(10, 120))
    assert constant_with_warmup(4)(100) == 1.0
