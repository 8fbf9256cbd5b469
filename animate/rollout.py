"""Long videos in one place: every method's rollout over driving poses of any length, behind one interface.

Strategies (``rollout.strategy``; ``None`` = the method's own, :attr:`AnimationSystem.rollout_defaults`):

- ``independent``: chunks that share only the reference.
- ``image_carry``: image-space carry-over. The previous chunk is decoded and its last frames are
  VAE-encoded again. A method that holds the carry inside its target (UniAnimate-DiT,
  FramePrompt, One-to-All) keeps the last ``carry_frames`` frames (1 = the last frame) clean at t = 0
  at the start of the next chunk and drops them from its output; a method with a motion memory
  (EverAnimate) re-encodes the last ``1 + 4 L_m`` frames and takes the last L_m latents as memory,
  the same kind of latents it trained on.
- ``token_replace``: One-to-All's: ``image_carry`` of the last 5 frames (2 latent frames) by default.
- ``latent_carry``: EverAnimate's persistent latent propagation: the previous chunk's last L_m
  latent frames are the motion memory as they are, with no VAE call between chunks.
- ``sliding_window``: UniAnimate-DiT's (DiffSynth's long-video loop): the whole latent sequence is
  denoised at once; at every step each window of ``window_latents`` latent frames (``overlap_latents``
  shared with the next) takes an Euler step and the shared latents become the average of the windows'
  stepped latents. Each later window keeps its first two latent frames to itself (fresh noise at the
  start, never written back), so neighbours must share at least two.

A chunk-by-chunk rollout keeps every finished chunk in a :class:`ChunkStore` (its latents, its
frames and what later chunks need), so an interrupted generation resumes at the next chunk and
gives the same video; the mp4 grows as chunks finish (:class:`common.video.Mp4Stream`).
A memory method's chunk is decoded after ``decode_warmup`` latent frames of the previous chunk,
whose frames are dropped, so its first latent frame decodes as a continuation (Wan's VAE is causal).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from animate.flow import clip_noise, guidance_weights, guided_velocity, sampling_times
from common.files import atomic_torch_save

STRATEGIES = ("independent", "image_carry", "token_replace", "latent_carry", "sliding_window")
STATIC_KEYS = ("reference", "reference_pose", "reference_mask", "reference_keypoints", "reference_views")
FRAME_KEYS = {"pose": 2, "driving": 2, "keypoints": 1}  # per-frame inputs a chunk slices (key: its time dimension)
TOKEN_REPLACE_FRAMES = 5  # One-to-All: the last 5 frames of the previous segment = 2 latent frames
PRIVATE_LATENTS = 2  # UniAnimate-DiT (DiffSynth's long-video loop): latent frames at the start of each later window kept to itself


@dataclass(frozen=True)
class RolloutConfig:
    """How a long video is rolled out (the ``rollout`` config group)."""

    strategy: str = "independent"
    chunk_frames: int = 17  # driving frames per chunk, 1 + 4k (window_latents sets sliding windows)
    carry_frames: int | None = None  # frames carried into the next chunk's target, 1 + 4k; None = 1 (image_carry), 5 (token_replace)
    window_latents: int = 21  # sliding_window: latent frames per window (UniAnimate-DiT: 21)
    overlap_latents: int = 4  # sliding_window: latent frames shared by neighbouring windows (UniAnimate-DiT: 4)
    decode_warmup: int = 2  # memory methods: latent frames of the previous chunk decoded first, then dropped

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"rollout.strategy={self.strategy!r}: use one of {', '.join(STRATEGIES)}")
        for name in ("chunk_frames", "carry_frames"):
            value = getattr(self, name)
            if value is not None and (value < 1 or (value - 1) % 4):
                raise ValueError(f"rollout.{name}={value}: must be 1 + 4k frames (Wan's VAE compresses time 4x)")
        if self.window_latents < 2 or not 0 <= self.overlap_latents < self.window_latents:
            raise ValueError(f"rollout.window_latents={self.window_latents}, overlap_latents={self.overlap_latents}: "
                             "need window >= 2 and 0 <= overlap < window")
        if self.strategy == "sliding_window" and self.overlap_latents < PRIVATE_LATENTS:
            raise ValueError(f"rollout.overlap_latents={self.overlap_latents}: sliding windows keep their first {PRIVATE_LATENTS} latent frames "
                             f"to themselves, so neighbouring windows must share at least {PRIVATE_LATENTS} (UniAnimate-DiT: 4)")
        if self.decode_warmup < 1:
            raise ValueError(f"rollout.decode_warmup={self.decode_warmup}: at least 1 latent frame")

    @property
    def carried_frames(self) -> int:
        """Frames of a chunk's end carried into the next chunk's target (methods without a motion memory)."""
        if self.strategy == "independent":
            return 0
        if self.carry_frames is not None:
            return self.carry_frames
        return TOKEN_REPLACE_FRAMES if self.strategy == "token_replace" else 1


def new_frames_per_chunk(system: Any, cfg: RolloutConfig) -> int:
    """Frames each chunk after the first adds (a sliding window: its stride in frames): the natural drift window."""
    if cfg.strategy == "sliding_window":
        return 4 * (cfg.window_latents - cfg.overlap_latents)
    if getattr(system, "carries_memory", False) and cfg.strategy != "independent":
        return cfg.chunk_frames - 1
    return cfg.chunk_frames - cfg.carried_frames


def rollout_config(system: Any, overrides: Mapping[str, Any] | None = None) -> RolloutConfig:
    """The method's own rollout (:attr:`rollout_defaults`) with ``overrides`` (None values ignored)."""
    settings = dict(system.rollout_defaults()) | {k: v for k, v in dict(overrides or {}).items() if v is not None}
    return RolloutConfig(**settings)


# ----------------------------------------------------------------------------- chunk store
class ChunkStore:
    """Finished chunks in a directory (``chunk-NNNN.pt``, written atomically) for resuming a generation.

    ``signature``: what must match for a resume (checkpoint, inputs, strategy, sampler, seed); a
    directory holding chunks of another generation is refused with a one-line error.
    """

    def __init__(self, directory: str | Path, signature: Mapping[str, Any]):
        self.directory = Path(directory)
        self.signature = {key: str(value) for key, value in signature.items()}
        self.directory.mkdir(parents=True, exist_ok=True)

    def path(self, index: int) -> Path:
        return self.directory / f"chunk-{index:04d}.pt"

    def finished(self) -> Iterator[dict]:
        """The finished chunks in order, up to the first missing one."""
        index = 0
        while self.path(index).is_file():
            record = torch.load(self.path(index), map_location="cpu", weights_only=True)
            if record.get("signature") != self.signature:
                changed = sorted(k for k in self.signature if record.get("signature", {}).get(k) != self.signature[k])
                raise ValueError(f"{self.directory} holds chunks of another generation ({', '.join(changed)} differ): "
                                 "delete it or write to another out=")
            yield record
            index += 1

    def save(self, index: int, record: dict) -> None:
        """Keep chunk ``index``."""
        atomic_torch_save(self.path(index), record | {"signature": self.signature})


def tensor_digest(*tensors: Tensor) -> str:
    """A short digest of tensors' values (the inputs part of a store's signature)."""
    digest = hashlib.sha256()
    for tensor in tensors:
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


# ----------------------------------------------------------------------------- chunk plans
@dataclass(frozen=True)
class Chunk:
    """One chunk: the driving frames it reads (``pose_start:pose_stop``, padded to ``pose_frames``) and the frames it adds."""

    index: int
    pose_start: int
    pose_stop: int
    pose_frames: int  # 1 + 4k after padding with the last pose
    out_start: int
    out_stop: int
    skip: int  # leading decoded frames that are not new (the carried frames, or a memory method's warm-up)


def round_up_frames(frames: int) -> int:
    """The smallest 1 + 4k >= ``frames``."""
    return 1 + -(-(frames - 1) // 4) * 4


def plan_chunks(total: int, cfg: RolloutConfig, memory_latents: int | None) -> list[Chunk]:
    """Chunks covering ``total`` driving frames. ``memory_latents``: L_m of a memory method, else None."""
    carried = cfg.carried_frames
    if memory_latents is None and carried >= cfg.chunk_frames:
        raise ValueError(f"rollout.chunk_frames={cfg.chunk_frames} must exceed the {carried} frames carried into each chunk")
    chunks, out = [], 0
    while out < total:
        index = len(chunks)
        if index == 0:
            length = min(cfg.chunk_frames, total)
            chunks.append(Chunk(0, 0, length, round_up_frames(length), 0, length, 0))
        elif memory_latents is not None:  # the pose clip starts 1 + 4 L_m frames early: its first latents are the memory's
            lead = 1 + 4 * memory_latents
            new = min(cfg.chunk_frames - 1, total - out)
            pose_frames = lead + 4 * -(-new // 4)
            chunks.append(Chunk(index, out - lead, min(out + new, total), pose_frames, out, out + new, 0))
        else:
            start = out - carried if carried else out
            length = min(cfg.chunk_frames, total - start)
            chunks.append(Chunk(index, start, start + length, round_up_frames(length), out, start + length, carried))
        out = chunks[-1].out_stop
    return chunks


def chunk_batch(batch: dict, chunk: Chunk) -> dict:
    """The inference batch of one chunk: the static inputs, its per-frame inputs (padded with the last frame), its own noise key."""
    part = {name: batch[name] for name in STATIC_KEYS if name in batch}
    for name, dim in FRAME_KEYS.items():
        if batch.get(name) is not None:
            part[name] = frames_of(batch[name], dim, chunk.pose_start, chunk.pose_stop, chunk.pose_frames)
    keys = batch.get("key") or [str(i) for i in range(batch["pose"].shape[0])]
    return part | {"key": [f"{key}#chunk{chunk.index}" for key in keys]}


def frames_of(x: Tensor, dim: int, start: int, stop: int, frames: int) -> Tensor:
    """``x``'s frames ``start:stop`` along ``dim``, padded to ``frames`` by repeating the last."""
    part = x.narrow(dim, start, stop - start)
    pad = frames - part.shape[dim]
    if not pad:
        return part
    last = part.narrow(dim, part.shape[dim] - 1, 1)
    return torch.cat([part, last.expand(*[pad if d == dim else -1 for d in range(x.ndim)])], dim=dim)


# ----------------------------------------------------------------------------- rollouts
def roll_out(
    system: Any,
    batch: dict,
    cfg: RolloutConfig,
    options: Mapping[str, Any] | None = None,
    store: ChunkStore | None = None,
    on_frames: Callable[[Tensor], None] | None = None,
    progress: bool = True,
) -> Tensor:
    """Animate ``batch["pose"]`` (B, 3, T, H, W) of any length: video (B, 3, T, H, W) in [-1, 1].

    ``options``: sampler settings for :meth:`sample_latents` (steps, shift, schedule, guidance, seed);
    ``store``: keeps finished chunks and resumes from them; ``on_frames``: receives each chunk's
    new frames (B, 3, n, H, W) in order, the resumed ones first.
    """
    options = dict(options or {})
    memory = getattr(system, "motion_latents", None) if getattr(system, "carries_memory", False) else None
    if cfg.strategy == "sliding_window":
        if memory is not None:
            raise ValueError(f"rollout.strategy=sliding_window: {type(system).__name__} generates from a motion memory, "
                             "chunk by chunk (use latent_carry, image_carry or independent)")
        video = sliding_windows(system, batch, cfg, options, store, progress)
        if on_frames is not None:
            on_frames(video)
        return video
    if cfg.strategy == "latent_carry" and memory is None:
        raise ValueError(f"rollout.strategy=latent_carry needs a method with a motion memory (EverAnimate); "
                         f"{type(system).__name__} carries frames over (image_carry, token_replace) or none (independent)")
    if cfg.strategy == "token_replace" and memory is not None:
        raise ValueError(f"rollout.strategy=token_replace holds frames inside the target; {type(system).__name__} "
                         "carries a motion memory (latent_carry or image_carry)")
    if cfg.strategy == "independent":
        memory = None  # no motion memory to carry: every chunk starts as a first chunk
    total = batch["pose"].shape[2]
    chunks = plan_chunks(total, cfg, memory)
    pieces: list[Tensor] = []
    previous: dict | None = None  # the last finished chunk's record
    kept: dict[str, Tensor] = {}  # what the first chunk leaves for all later ones (EverAnimate's identity memory)
    finished = list(store.finished()) if store is not None else []
    for chunk in tqdm(chunks, desc="chunks", unit="chunk", disable=not progress):
        if chunk.index < len(finished):
            record = finished[chunk.index]
        else:
            record = generate_chunk(system, batch, chunk, cfg, previous, kept, memory, options)
            if store is not None:
                store.save(chunk.index, record)
        if chunk.index == 0:
            kept = record.get("kept", {})
        pieces.append(record["video"].float() / 127.5 - 1)
        if on_frames is not None:
            on_frames(pieces[-1])
        previous = record
    return torch.cat(pieces, dim=2)[:, :, :total]


def generate_chunk(system: Any, batch: dict, chunk: Chunk, cfg: RolloutConfig, previous: dict | None,
                   kept: dict[str, Tensor], memory: int | None, options: dict) -> dict:
    """Generate one chunk from the previous one's record: {"latents", "video" uint8, "tail" frames, "kept"}."""
    device = system.device
    part = chunk_batch(batch, chunk) | {name: value.to(device) for name, value in kept.items()}
    vae = system.backbone.vae
    context = None
    if previous is not None and cfg.strategy != "independent":
        if memory is not None:
            if cfg.strategy == "latent_carry":
                motion = previous["latents"][:, :, -memory:]  # reused as generated: no decode, no encode
            else:  # decode (done), re-encode the last 1 + 4 L_m frames, keep their last L_m latents
                motion = vae.encode(previous["tail"].to(device).float() / 127.5 - 1)[:, :, -memory:]
            part |= {"motion_memory": motion.to(device), "pose_lead_latents": 1 + memory}
        else:
            context = vae.encode(previous["tail"].to(device).float() / 127.5 - 1)  # the carried frames, encoded again
    latents = system.sample_latents(part, context=context, **options)  # (B, C, F, h, w)
    if memory is not None and previous is not None:  # decode as a continuation of the previous chunk
        warm = previous["latents"][:, :, -cfg.decode_warmup :]
        video = vae.decode(torch.cat([warm.to(latents), latents], dim=2))[:, :, 1 + 4 * (warm.shape[2] - 1) :]
    else:
        video = vae.decode(latents)[:, :, chunk.skip :]
    video = video[:, :, : chunk.out_stop - chunk.out_start]
    record = {"latents": latents.cpu(), "video": to_uint8(video), "tail": to_uint8(video[:, :, -tail_frames(cfg, memory) :])}
    if chunk.index == 0:
        record["kept"] = {name: value.cpu() for name, value in system.after_first_chunk(part, video, options.get("seed", 0)).items()}
    return record


def tail_frames(cfg: RolloutConfig, memory: int | None) -> int:
    """Frames of a chunk's end that the next chunk's image-space carry-over re-encodes."""
    if memory is not None:
        return 1 + 4 * memory
    return cfg.carried_frames


def to_uint8(video: Tensor) -> Tensor:
    """[-1, 1] float -> uint8, same shape, on the CPU."""
    return ((video.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()


def window_starts(latent_frames: int, window: int, overlap: int) -> list[int]:
    """First latent frame of each sliding window: every ``window - overlap``, the last one ending at the last frame."""
    stride = window - overlap
    starts = range(0, max(1, latent_frames - window + stride), stride)
    return sorted({min(start, latent_frames - window) for start in starts})


def window_ownership(latent_frames: int, window: int, starts: list[int]) -> Tensor:
    """Windows writing each latent frame (F,): a later window's first :data:`PRIVATE_LATENTS` are its own, never written back."""
    count = torch.zeros(latent_frames)
    for index, start in enumerate(starts):
        count[start + (PRIVATE_LATENTS if index else 0) : start + window] += 1
    return count  # > 0 everywhere when neighbours share >= PRIVATE_LATENTS frames (RolloutConfig checks)


def resumed_steps(store: ChunkStore, x: Tensor, private: list[Tensor]) -> tuple[int, Tensor, list[Tensor]]:
    """(steps done, shared latents, each later window's own latents) kept in ``store``'s ``steps.pt``."""
    state = torch.load(store.directory / "steps.pt", map_location="cpu", weights_only=True)
    if state.get("signature") != store.signature:
        raise ValueError(f"{store.directory} holds steps of another generation: delete it or write to another out=")
    if len(state.get("private", ())) != len(private):
        raise ValueError(f"{store.directory} holds sliding-window steps without the windows' own latent frames "
                         "(written before windows kept them): delete it or write to another out=")
    return int(state["steps_done"]), state["latents"].to(x), [p.to(x) for p in state.get("private", [])]


def sliding_windows(system: Any, batch: dict, cfg: RolloutConfig, options: dict, store: ChunkStore | None, progress: bool) -> Tensor:
    """UniAnimate-DiT's long video: each step, the shared latents become the average of the windows' Euler-stepped latents.

    As DiffSynth's long-video loop (``WanUniAnimateLongVideoPipeline``, used by UniAnimate-DiT). Window 0 reads and
    writes the shared latents. Each later window's first :data:`PRIVATE_LATENTS` latent frames are its own state: fresh
    noise at the start, stepped with the window, never written back (its first latent frame is one frame, the I2V
    first-frame slot, not the 4-frame shared latent there). Every shared frame is averaged over the windows that write
    it. The official loop gives window 0 fresh noise for its first two frames too, but writes them back: the same thing.
    With a ``store`` the latents and the windows' own frames are kept after every step (``steps.pt``); a resumed run
    continues from the last.
    """
    total = batch["pose"].shape[2]
    padded = round_up_frames(total)
    latent_frames = 1 + (padded - 1) // 4
    window = min(cfg.window_latents, latent_frames)
    starts = window_starts(latent_frames, window, cfg.overlap_latents)
    count = window_ownership(latent_frames, window, starts)
    steps = options.get("steps") or system.sampler["steps"]
    shift = options.get("shift") if options.get("shift") is not None else system.sampler["shift"]
    schedule = options.get("schedule") or system.sampler["schedule"]
    guidance = list(options.get("guidance") if options.get("guidance") is not None else system.sampler["guidance"])
    levels = [i for i, c in enumerate(guidance_weights(guidance)) if c != 0.0]
    windows = []
    length = 1 + 4 * (window - 1)
    for index, start in enumerate(starts):  # window latent 0 is frame 4 start alone; latent j >= 1 covers the same frames as latent start + j
        first = 0 if start == 0 else 4 * start
        part = chunk_batch(batch, Chunk(index, first, min(first + length, total), length, first, first + length, 0))  # padded with the last frame
        sequences = system.sampling_sequences(part, levels)
        windows.append((start, sequences, system.level_velocity(sequences, options.get("cache_threshold"))))  # a step cache per window
    top = windows[0][1][levels[-1]]
    shape = (top.clean.shape[0], top.clean.shape[1], latent_frames, *top.clean.shape[3:])
    keys = batch.get("key") or [str(i) for i in range(shape[0])]
    x = clip_noise(shape, keys, options.get("seed", 0)).to(top.clean)
    private = [clip_noise((*shape[:2], PRIVATE_LATENTS, *shape[3:]), [f"{key}#window{index}" for key in keys], options.get("seed", 0)).to(x)
               for index in range(1, len(starts))]  # (B, C, 2, h, w) per later window
    state_path = None if store is None else store.directory / "steps.pt"
    done, x, private = resumed_steps(store, x, private) if state_path is not None and state_path.is_file() else (0, x, private)
    times = sampling_times(steps, shift, schedule=schedule, device=x.device)
    for i in tqdm(range(done, steps), desc="sliding-window steps", unit="step", disable=not progress):
        written = torch.zeros_like(x)  # (B, C, F, h, w) sum of the windows' stepped latents over the frames they write
        for index, (start, sequences, velocity) in enumerate(windows):
            own = PRIVATE_LATENTS if index else 0
            latents = x[:, :, start : start + window].clone()
            if own:
                latents[:, :, :own] = private[index - 1]
            seq = sequences[levels[-1]]
            x_window = seq.clean.clone()
            x_window[:, :, seq.target] = latents
            t = torch.where(seq.generate, times[i], torch.zeros_like(times[i])).to(x.dtype)
            v = guided_velocity(velocity, system.hold(x_window, seq), t, guidance)[:, :, seq.target]
            stepped = latents + (times[i + 1] - times[i]) * v  # the window's Euler step
            if own:
                private[index - 1] = stepped[:, :, :own]
            written[:, :, start + own : start + window] += stepped[:, :, own:]
        x = written / count.to(x).view(1, 1, -1, 1, 1)
        if state_path is not None:
            atomic_torch_save(state_path, {"steps_done": i + 1, "latents": x.cpu(), "private": [p.cpu() for p in private], "signature": store.signature})
    return system.backbone.vae.decode(x)[:, :, :total]
