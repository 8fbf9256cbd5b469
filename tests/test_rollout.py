"""Long-video rollouts: chunk plans, latent carry without the VAE, image carry, sliding windows, resume, the growing mp4."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from animate.flow import sampling_times
from animate.methods.base import LatentSequence
from animate.rollout import ChunkStore, RolloutConfig, plan_chunks, roll_out, rollout_config
from common.files import atomic_torch_save
from common.video import Mp4Stream, decode_video

from tiny_systems import everanimate, everanimate_on_animate, face_keypoints, fake_batch, frameprompt, unianimate


def long_batch(frames=29, b=1):
    """Inference inputs of ``frames`` driving poses (no ground truth)."""
    batch = {k: v for k, v in fake_batch(b=b).items() if k not in ("video", "loss_weight", "person_mask")}
    batch["pose"] = torch.rand(b, 3, frames, 32, 32, generator=torch.Generator().manual_seed(3)) * 2 - 1
    batch["key"] = [f"clip{i}" for i in range(b)]
    return batch


@pytest.mark.parametrize("memory", [None, 1])
@pytest.mark.parametrize("strategy", ["independent", "image_carry", "token_replace"])
def test_chunks_cover_every_frame_once_in_order(strategy, memory):
    if memory is not None and strategy == "token_replace":
        return
    cfg = RolloutConfig(strategy=strategy, chunk_frames=9)
    for total in (1, 5, 9, 10, 29, 61):
        chunks = plan_chunks(total, cfg, memory if strategy != "independent" else None)
        assert chunks[0].out_start == 0 and chunks[-1].out_stop == total
        assert all(a.out_stop == b.out_start for a, b in zip(chunks, chunks[1:]))
        assert all((c.pose_frames - 1) % 4 == 0 and c.pose_stop - c.pose_start <= c.pose_frames for c in chunks)


@torch.no_grad()
def test_latent_carry_passes_the_previous_latents_bit_for_bit_without_the_vae():
    system = everanimate().eval()
    seen, encoded = [], []
    sample = system.sample_latents

    def recording(batch, **kw):
        latents = sample(batch, **kw)
        seen.append((batch.get("motion_memory"), latents))
        return latents

    encode = system.backbone.vae.encode
    system.sample_latents = recording
    system.backbone.vae.encode = lambda video: encoded.append(video.shape) or encode(video)
    video = roll_out(system, long_batch(29), rollout_config(system, {"chunk_frames": 9}), progress=False)
    assert video.shape == (1, 3, 29, 32, 32) and len(seen) == 4  # 9 + 8 + 8 + 4 frames
    assert seen[0][0] is None  # the first chunk: the null motion memory
    for (_, previous), (memory, _) in zip(seen, seen[1:]):
        assert torch.equal(memory, previous[:, :, -1:])  # the last latent frame as generated
    # the first chunk: its poses, the reference, then the frozen identity memory; after it each chunk
    # encodes only its own poses (1 + 4 L_m + 8 frames), never a generated frame
    assert [shape[2] for shape in encoded] == [9, 1, 1, 13, 13, 9]


@torch.no_grad()
def test_chunks_slice_the_driving_frames_and_keypoints_with_the_poses():
    system = everanimate_on_animate().eval()
    batch = long_batch(21)
    batch["driving"] = torch.rand(1, 3, 21, 32, 32) * 2 - 1
    batch["keypoints"] = face_keypoints(1, 32, 32)[:, None].expand(1, 21, 133, 3).clone()
    seen = []
    sample = system.sample_latents
    system.sample_latents = lambda part, **kw: seen.append((part["pose"].shape[2], part["driving"].shape[2], part["keypoints"].shape[1])) or sample(part, **kw)
    video = roll_out(system, batch, rollout_config(system, {"chunk_frames": 9}), progress=False)
    assert video.shape == (1, 3, 21, 32, 32)
    assert all(p == d == k for p, d, k in seen) and [p for p, _, _ in seen] == [9, 13, 9]  # continuation chunks lead by 1 + 4 L_m frames


@torch.no_grad()
def test_image_carry_re_encodes_the_decoded_frames():
    system = everanimate().eval()
    encoded = []
    encode = system.backbone.vae.encode
    system.backbone.vae.encode = lambda video: encoded.append(video.shape[2]) or encode(video)
    roll_out(system, long_batch(17), rollout_config(system, {"chunk_frames": 9, "strategy": "image_carry"}), progress=False)
    assert encoded.count(5) == 1  # the last 1 + 4 L_m generated frames, encoded again for the second chunk


@torch.no_grad()
def test_first_chunk_fills_the_missing_identity_views_then_freezes_them():
    system = everanimate(identity_views=3).eval()
    memories = []
    sample = system.sample_latents
    system.sample_latents = lambda batch, **kw: memories.append(batch.get("identity_memory")) or sample(batch, **kw)
    roll_out(system, long_batch(21), rollout_config(system, {"chunk_frames": 9}), progress=False)
    assert memories[0] is None and memories[1].shape[2] == 3
    assert all(torch.equal(memory, memories[1]) for memory in memories[2:])


@torch.no_grad()
@pytest.mark.parametrize("make, settings", [
    (everanimate, {"chunk_frames": 9}),
    (frameprompt, {"chunk_frames": 9, "strategy": "image_carry"}),
    (unianimate, {"strategy": "sliding_window", "window_latents": 4, "overlap_latents": 2}),
])
def test_an_interrupted_generation_resumes_to_the_same_video(make, settings, tmp_path):
    system = make().eval()
    cfg = rollout_config(system, settings)
    batch = long_batch(25)
    whole = roll_out(system, batch, cfg, progress=False)
    store = ChunkStore(tmp_path / "chunks", {"test": 1})
    calls = {"n": 0}
    original = system.forward

    def crash_after_some_work(*args):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return original(*args)

    system.forward = crash_after_some_work
    with pytest.raises(KeyboardInterrupt):
        roll_out(system, batch, cfg, store=store, progress=False)
    system.forward = original
    kept = len(list((tmp_path / "chunks").iterdir()))
    assert kept >= 1  # finished work was kept
    resumed = roll_out(system, batch, cfg, store=store, progress=False)
    torch.testing.assert_close(resumed, whole, atol=2 / 255, rtol=0)  # chunks come back as uint8 frames
    with pytest.raises(ValueError, match="another generation"):
        list(ChunkStore(tmp_path / "chunks", {"test": 2}).finished()) or roll_out(system, batch, cfg, store=ChunkStore(tmp_path / "chunks", {"test": 2}), progress=False)


@torch.no_grad()
def test_sliding_windows_average_overlapping_windows():
    system = unianimate().eval()
    batch = long_batch(17)
    cfg = rollout_config(system, {"strategy": "sliding_window", "window_latents": 4, "overlap_latents": 2})
    windows = []
    sequences = system.sampling_sequences
    system.sampling_sequences = lambda part, levels: windows.append(part["pose"].shape[2]) or sequences(part, levels)
    video = roll_out(system, batch, cfg, progress=False)
    assert video.shape == (1, 3, 17, 32, 32) and windows == [13, 13]  # latents 0-3 and 1-4 of 5


class WindowPull:
    """A stand-in system whose window w pulls its latents straight to the constant w + 1: v = (x - (w + 1)) / t + mix * mean_F(x).

    With ``mix = 0`` every latent ends at the mean of its writers' constants; its "decoder" returns the latents.
    """

    rollout_defaults = staticmethod(lambda: {"strategy": "sliding_window"})

    def __init__(self, mix=0.0, crash_at=None):
        self.sampler = dict(steps=5, shift=3.0, guidance=[1.0], schedule="diffsynth")
        self.backbone = SimpleNamespace(vae=SimpleNamespace(decode=lambda x: x))
        self.mix, self.crash_at, self.windows, self.seen = mix, crash_at, 0, []  # seen: (window, its input latents) per forward

    def sampling_sequences(self, part, levels):
        frames = 1 + (part["pose"].shape[2] - 1) // 4
        seq = LatentSequence(torch.zeros(1, 2, frames, 2, 2), torch.ones(1, frames, dtype=torch.bool), torch.ones(1, 1, frames, 2, 2), slice(0, frames))
        return {level: seq for level in levels}

    def level_velocity(self, sequences, cache_threshold):
        window, self.windows = self.windows, self.windows + 1

        def velocity(x, t, levels):
            if len(self.seen) == self.crash_at:
                raise KeyboardInterrupt
            self.seen.append((window, x.clone()))
            return ((x - (window + 1)) / t[:, None, :, None, None] + self.mix * x.mean(dim=2, keepdim=True)).repeat(len(levels), 1, 1, 1, 1)

        return velocity

    def hold(self, x, seq):
        return x


def pull_batch(frames=29):
    """Driving frames only: what the stand-in system reads."""
    return {"pose": torch.zeros(1, 3, frames, 8, 8), "key": ["clip"]}


@torch.no_grad()
def test_sliding_windows_keep_their_first_two_latents_and_average_only_what_they_write():
    # 8 latent frames, windows of 5 sharing 3: latents 0-4, 2-6, 3-7; windows 1 and 2 keep latents 2-3 and 3-4 to themselves
    system = WindowPull()
    cfg = RolloutConfig(strategy="sliding_window", window_latents=5, overlap_latents=3)
    latents = roll_out(system, pull_batch(), cfg, progress=False)
    per_frame = latents[0].mean(dim=(0, 2, 3))
    torch.testing.assert_close(per_frame, torch.tensor([1, 1, 1, 1, 1.5, 2.5, 2.5, 3]))  # window 0 pulls to 1, window 1 to 2, window 2 to 3
    # window 1's own latents start from fresh noise (not the shared noise window 0 reads there) and follow its own straight path
    first = {window: x for window, x in system.seen[:3]}
    assert not torch.allclose(first[1][:, :, :2], first[0][:, :, 2:4])
    times = sampling_times(5, 3.0, schedule="diffsynth")
    own = [x[:, :, :2] for window, x in system.seen if window == 1]
    for step, x in enumerate(own):
        torch.testing.assert_close(x, 2 + times[step] * (own[0] - 2))


@torch.no_grad()
def test_an_interrupted_sliding_window_generation_resumes_with_the_windows_own_latents(tmp_path):
    cfg = RolloutConfig(strategy="sliding_window", window_latents=5, overlap_latents=3)
    whole = roll_out(WindowPull(mix=0.5), pull_batch(), cfg, progress=False)  # mix: a window's own latents move the latents it writes
    store = ChunkStore(tmp_path / "chunks", {"test": 1})
    with pytest.raises(KeyboardInterrupt):
        roll_out(WindowPull(mix=0.5, crash_at=7), pull_batch(), cfg, store=store, progress=False)  # in step 3 of 5
    assert torch.load(tmp_path / "chunks" / "steps.pt", weights_only=True)["steps_done"] == 2
    resumed = WindowPull(mix=0.5)
    torch.testing.assert_close(roll_out(resumed, pull_batch(), cfg, store=store, progress=False), whole)
    assert len(resumed.seen) == 3 * 3  # the 3 steps left
    state = torch.load(tmp_path / "chunks" / "steps.pt", weights_only=True)
    atomic_torch_save(tmp_path / "chunks" / "steps.pt", {key: value for key, value in state.items() if key != "private"} | {"steps_done": 2})
    with pytest.raises(ValueError, match="without the windows' own latent frames"):  # steps written before windows kept them
        roll_out(WindowPull(mix=0.5), pull_batch(), cfg, store=store, progress=False)


def test_sliding_windows_sharing_fewer_latents_than_a_window_keeps_are_refused():
    with pytest.raises(ValueError, match="overlap_latents=1: .* at least 2"):
        RolloutConfig(strategy="sliding_window", window_latents=5, overlap_latents=1)


def test_strategies_a_method_cannot_run_are_refused_in_one_line():
    batch = long_batch(9)
    with pytest.raises(ValueError, match="latent_carry needs a method with a motion memory"):
        roll_out(frameprompt(), batch, RolloutConfig(strategy="latent_carry"), progress=False)
    with pytest.raises(ValueError, match="sliding_window"):
        roll_out(everanimate(), batch, RolloutConfig(strategy="sliding_window"), progress=False)
    with pytest.raises(ValueError, match="1 \\+ 4k"):
        RolloutConfig(chunk_frames=8)
    with pytest.raises(ValueError, match="strategy"):
        RolloutConfig(strategy="magic")


def test_mp4_stream_grows_and_is_renamed_when_closed(tmp_path):
    frames = (np.random.default_rng(0).random((6, 32, 48, 3)) * 255).astype(np.uint8)
    with Mp4Stream(tmp_path / "out.mp4", fps=12) as stream:
        stream.write(frames[:3])
        assert stream.partial.is_file() and not (tmp_path / "out.mp4").exists()
        stream.write(frames[3:])
    assert decode_video((tmp_path / "out.mp4").read_bytes(), "out.mp4").shape == (6, 32, 48, 3)
    with pytest.raises(RuntimeError), Mp4Stream(tmp_path / "broken.mp4", fps=12) as stream:
        stream.write(frames)
        raise RuntimeError("interrupted")
    assert (tmp_path / "broken.partial.mp4").is_file() and not (tmp_path / "broken.mp4").exists()
