"""Step caching while sampling (First-Block Cache): exact when off, reuse bounded by the threshold, reachable from the config."""

import pytest
import torch

from animate.flow import sampling_times
from animate.step_cache import FirstBlockCache

import tiny_systems


def forwards(system, batch, times, cache=None):
    """The top CFG level's velocity at each time in ``times``, all through one cache (or none)."""
    seq = system.sampling_sequences(batch, [0])[0]
    x = system.hold(torch.randn(seq.clean.shape, generator=torch.Generator().manual_seed(0)), seq)
    out = []
    with system.backbone.caching(cache):
        for t in times:
            out.append(system(seq, x, torch.where(seq.generate, t, torch.zeros_like(t))))
    return out


@pytest.mark.parametrize("make", [tiny_systems.frameprompt, tiny_systems.onetoall, tiny_systems.everanimate_on_animate])
def test_a_cache_at_threshold_zero_changes_no_bit_of_any_forward(make):
    system, batch = make().eval(), tiny_systems.fake_batch()
    times = sampling_times(4, 3.0, schedule="diffsynth")[:-1]
    cache = FirstBlockCache(0.0)
    with torch.no_grad():
        plain, cached = forwards(system, batch, times), forwards(system, batch, times, cache)
    assert all(torch.equal(a, b) for a, b in zip(plain, cached))
    assert (cache.computed, cache.reused, cache.rest_residual) == (len(times), 0, None)  # off: nothing kept


def test_an_unchanged_first_block_reuses_the_rest_of_the_network():
    system, batch = tiny_systems.onetoall().eval(), tiny_systems.fake_batch()
    t = torch.tensor(0.6)
    cache = FirstBlockCache(1e-3)
    with torch.no_grad():
        first, again = forwards(system, batch, [t, t], cache)  # the same input twice: block 0's residual is unchanged
        far = forwards(system, batch, [torch.tensor(0.05)], cache)[0]  # another noise level: block 0 moves past the threshold
    assert (cache.computed, cache.reused) == (2, 1)
    assert torch.allclose(first, again, atol=1e-5) and not torch.allclose(far, first, atol=1e-3)


def test_sampling_with_a_threshold_skips_steps_and_stays_near_the_uncached_sample():
    system, batch = tiny_systems.frameprompt().eval(), tiny_systems.fake_batch()
    plain = system.sample_latents(batch, steps=8, seed=1)
    assert system.step_cache is None  # sampler.cache_threshold = 0: off
    everything = system.sample_latents(batch, steps=8, seed=1, cache_threshold=1e9)
    assert (system.step_cache.computed, system.step_cache.reused) == (1, 7)  # only the first step computes every block
    some = system.sample_latents(batch, steps=8, seed=1, cache_threshold=0.05)
    assert 1 <= system.step_cache.computed <= 8
    error = lambda x: (x - plain).abs().mean().item()
    assert error(some) <= error(everything) and not torch.equal(everything, plain)


def test_the_configs_threshold_reaches_predict_step():
    system = tiny_systems.frameprompt().eval()
    system.sampler |= {"steps": 3, "cache_threshold": 1e9}  # method.sampler.cache_threshold
    batch = tiny_systems.fake_batch() | {"key": ["a", "b"]}
    system.predict_step(batch, 0)
    assert system.step_cache.reused == 2
    system.prediction["cache_threshold"] = 0.0  # experiments.generate sampler.cache_threshold=0: off for this generation
    system.predict_step(batch, 0)
    assert system.step_cache is None


def test_a_negative_threshold_is_refused_by_name():
    with pytest.raises(ValueError, match="sampler.cache_threshold=-0.1"):
        FirstBlockCache(-0.1)


def test_the_benchmark_reports_reuse_and_the_cost_against_the_uncached_video():
    from benchmarks.step_cache import measure

    system, batch = tiny_systems.frameprompt().eval(), tiny_systems.fake_batch()
    reference, uncached = measure(system, batch, 0.0, steps=4)
    cached, _ = measure(system, batch, 1e9, steps=4, uncached=uncached)
    assert reference["reused_fraction"] == 0 and reference["psnr_vs_uncached"] is None and "psnr_mask" in reference
    assert cached["reused_fraction"] == 0.75 and cached["psnr_vs_uncached"] < 100  # 3 of 4 steps reused, the video changed
