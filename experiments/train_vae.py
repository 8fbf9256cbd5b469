"""Train the tiny default Wan VAE on the synthetic puppets.

    python -m experiments.train_vae out=animate/assets/tiny_wan_vae [key=value ...]

The model is diffusers' ``AutoencoderKLWan`` (z_dim 16, 8x spatial and 4x causal temporal
compression: the Wan2.1 architecture) at tiny width. It trains on random short clips (1 + 4k
frames) and single frames, random square crops whose side is a multiple of 16, with L1 + MSE +
an image-gradient loss and a small KL term. Afterwards the per-channel mean/std of the posterior
means over training clips go into the config's ``latents_mean``/``latents_std`` (diffusers' Wan
convention: ``z_normalised = (z - mean) / std``), the held-out reconstruction PSNR is printed
(overall and inside the person mask), and the model is written in diffusers layout (config.json +
diffusion_pytorch_model.safetensors, float32). Settings and their defaults (which reproduce the
shipped VAE's first stage; its second fine-tunes that with ``init`` and ``still_weight``, see
docs/TINY_VAE.md): conf/train_vae.yaml. Without ``dataset=`` it trains on the training configs' default
puppets (``${paths.cache}/data/synthetic``, made on first use). Output is a function of the
settings and the data (fixed seeds; CPU).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKLWan
from omegaconf import DictConfig
from tqdm import tqdm

from animate import diffusers_wan as wan
from animate.backbone import resolve_path
from animate.weights import load_vae, save_diffusers
from common.cli import compose_config, run, to_dataclass
from common.geometry import WAN
from data.shards import Sample, iter_shard_samples, read_manifest
from data.synthetic import SyntheticConfig, ensure_dataset
from metrics.pixel import frame_psnr, masked_frame_psnr

MIN_BATCH = 2  # at batch 1 PyTorch's CPU conv3d takes its ~10x slower non-oneDNN path
EVAL_FRAMES = 17
STATS_CLIPS = 64
INITIAL_LOGVAR = -6.0


@dataclass
class TrainVAEConfig:
    """Settings of a VAE training run: the keys of conf/train_vae.yaml (which holds the defaults and their meaning)."""

    out: str
    init: str | None
    dataset: str | None
    puppets: dict[str, Any]
    paths: dict[str, Any]
    steps: int
    seed: int
    train_frames: list[int]
    size: list[int]
    pixels_per_step: int
    max_pixels_per_step: int
    lr: float
    l1_weight: float
    edge_weight: float
    kl_weight: float
    still_fraction: float
    still_weight: float
    posterior: str
    zero_init: bool
    base_dim: int
    decoder_base_dim: int
    dim_mult: list[int]
    temporal_downsample: list[bool]
    num_res_blocks: int
    train_part: str
    person_weight: float
    eval_split: str
    eval_clips: int | None
    threads: int

    def __post_init__(self) -> None:
        """Reject settings that cannot train, naming the key."""
        if len(self.size) != 2 or any(side % 16 for side in self.size) or not 16 <= self.size[0] <= self.size[1]:
            raise ValueError(f"size={self.size}: need [MIN, MAX], multiples of 16 with 16 <= MIN <= MAX")
        if self.steps < 1:
            raise ValueError(f"steps={self.steps}: must be at least 1")
        if not self.train_frames or any(frames < 1 or (frames - 1) % WAN.vae_time for frames in self.train_frames):
            raise ValueError(f"train_frames={self.train_frames}: must be frame counts 1 + {WAN.vae_time}k (1, 5, 9, 17, ...)")
        if not 0 <= self.still_fraction <= 1:
            raise ValueError(f"still_fraction={self.still_fraction}: must be in [0, 1]")
        if self.train_part not in ("all", "decoder"):
            raise ValueError(f"train_part={self.train_part}: must be one of all, decoder")
        if self.train_part == "decoder" and not self.init:
            raise ValueError("train_part=decoder: needs init= (the VAE whose encoder and latent space are kept)")
        if self.person_weight < 0:
            raise ValueError(f"person_weight={self.person_weight}: must be >= 0")
        if self.posterior not in ("sample", "mean"):
            raise ValueError(f"posterior={self.posterior}: must be one of sample, mean")
        if len(self.dim_mult) < 2:
            raise ValueError(f"dim_mult={self.dim_mult}: needs an entry per level, at least 2 (spatial compression 2 ** (levels - 1))")
        if len(self.temporal_downsample) != len(self.dim_mult) - 1 or sum(self.temporal_downsample) != 2:
            raise ValueError(
                f"temporal_downsample={self.temporal_downsample}: needs one entry per downsampling level "
                f"({len(self.dim_mult) - 1}), two of them true (Wan's 4x causal time)"
            )


def settings(overrides: list[str] = ()) -> TrainVAEConfig:
    """conf/train_vae.yaml with ``key=value`` overrides, checked (for code that trains or builds the VAE outside the command line)."""
    return to_dataclass(TrainVAEConfig, compose_config("train_vae", overrides))


def build_vae(args: TrainVAEConfig) -> AutoencoderKLWan:
    """The VAE to train: ``init``'s weights when given, else a freshly initialised tiny Wan VAE (seeded).

    Two departures from diffusers' default initialisation, both measured to matter here:
    the posterior log-variance bias starts at INITIAL_LOGVAR (std 0.05; at std ~1 the sampled
    latent carries no information and training collapses to the mean image), and every residual
    branch and attention output starts at zero, so each block starts as its shortcut
    (``zero_init=false`` turns it off; docs/TINY_VAE.md has the probe numbers).
    """
    torch.manual_seed(args.seed)
    if args.init:
        return load_vae(resolve_path(args.init)).float().train()
    vae = AutoencoderKLWan(
        base_dim=args.base_dim,
        decoder_base_dim=args.decoder_base_dim,
        z_dim=16,
        dim_mult=list(args.dim_mult),
        num_res_blocks=args.num_res_blocks,
        temperal_downsample=list(args.temporal_downsample),
        scale_factor_spatial=2 ** (len(args.dim_mult) - 1),
    )
    with torch.no_grad():
        wan.vae_posterior_logvar_bias(vae).fill_(INITIAL_LOGVAR)
        for last in wan.vae_residual_outputs(vae) if args.zero_init else ():
            last.weight.zero_()
            last.bias.zero_()
    return vae


def dataset_dir(args: TrainVAEConfig) -> Path:
    """``dataset`` if given, else the default synthetic puppets (generated on first use, shared with training runs)."""
    if args.dataset is not None:
        return Path(args.dataset)
    root = Path(args.puppets["root"])
    ensure_dataset(root, SyntheticConfig(**args.puppets["synthetic"]))
    return root


def load_split(directory: Path, split: str) -> list[Sample]:
    """All decoded samples (videos and images) of one split of a dataset directory."""
    splits = read_manifest(directory).get("splits", {})
    if split not in splits:
        raise ValueError(f"{directory}/manifest.json: no split {split!r} (has {', '.join(splits) or 'none'})")
    shards = [directory / path for subset in splits[split].values() if isinstance(subset, dict) for path in subset.get("shards", [])]
    samples = list(iter_shard_samples(shards))
    if not samples:
        raise ValueError(f"{directory}: split {split!r} has no readable samples")
    return samples


def to_model_range(frames: np.ndarray) -> torch.Tensor:
    """uint8 (..., T, H, W, 3) -> float (..., 3, T, H, W) in [-1, 1]."""
    video = torch.from_numpy(np.ascontiguousarray(frames)).float().div(127.5).sub(1)
    return video.movedim(-1, -4)


def random_batch(samples: list[Sample], rng: np.random.Generator, frames: int, side: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random ``frames``-long windows, ``side``-pixel crops, random flips -> video (B, 3, T, side, side), person mask (B, 1, T, side, side).

    The mask is 0 where a sample has none (an image without a person mask).
    """
    candidates = [s for s in samples if s.frames.shape[0] >= frames and min(s.frames.shape[1:3]) >= side]
    if not candidates:
        raise ValueError(f"no training sample has {frames} frames of at least {side}x{side} pixels")
    crops, masks = [], []
    for index in rng.integers(len(candidates), size=batch_size):
        video = candidates[index].frames  # (T, H, W, 3) uint8
        person = candidates[index].person_mask  # (T, H, W) or None
        start = rng.integers(video.shape[0] - frames + 1)
        top = rng.integers(video.shape[1] - side + 1)
        left = rng.integers(video.shape[2] - side + 1)
        window = (slice(start, start + frames), slice(top, top + side), slice(left, left + side))
        crop = video[window]
        mask = np.zeros(crop.shape[:3], np.float32) if person is None else person[window].astype(np.float32)
        if rng.random() < 0.5:
            crop, mask = crop[:, :, ::-1], mask[:, :, ::-1]
        crops.append(crop)
        masks.append(mask)
    return to_model_range(np.stack(crops)), torch.from_numpy(np.ascontiguousarray(np.stack(masks)))[:, None]


def image_gradients(video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Horizontal and vertical finite differences of (B, C, T, H, W)."""
    return video[..., :, 1:] - video[..., :, :-1], video[..., 1:, :] - video[..., :-1, :]


def decode_unclamped(vae: AutoencoderKLWan, latents: torch.Tensor) -> torch.Tensor:
    """``vae.decode`` without its final clamp to [-1, 1] (:func:`animate.diffusers_wan.vae_decode_unclamped`).

    The clamp zeroes the gradient of every pixel the decoder overshoots; saturated colours (the
    puppets' whites and blacks) then stop learning, and training sits on a plateau near 13 dB.
    """
    return wan.vae_decode_unclamped(vae, latents)


def hold_still(video: torch.Tensor, fraction: float) -> tuple[torch.Tensor, int]:
    """Replace the first ``fraction`` of the clips (at least one when positive) by their first frame held still; returns (video, count)."""
    count = min(video.shape[0], math.ceil(fraction * video.shape[0])) if video.shape[2] > 1 else 0
    if count:
        video = torch.cat([video[:count, :, :1].expand(-1, -1, video.shape[2], -1, -1), video[count:]])
    return video, count


def still_consistency(latents: torch.Tensor, still: int) -> torch.Tensor:
    """Mean square distance of the still clips' later latent frames to their one-frame latent (frame 0), over the latents' variance.

    A causal VAE encodes frame 0 alone and later frames in groups; with this term a still image
    has one encoding either way, as in Wan's joint image-video latent space, so a reference
    image's latent is a copy away from a video's latent frames.
    """
    if not still:
        return latents.new_zeros(())
    held = latents[:still]  # (S, C, F, h, w)
    return (held[:, :, 1:] - held[:, :, :1]).square().mean() / latents.detach().var().clamp_min(1e-6)


def training_loss(
    vae: AutoencoderKLWan, video: torch.Tensor, generator: torch.Generator, args: TrainVAEConfig, person: torch.Tensor | None = None
) -> tuple[torch.Tensor, dict]:
    """MSE (weighted 1 + ``person_weight`` inside the person mask) + L1 + edge L1 on the reconstruction of a posterior sample,
    the KL to N(0, 1), and the still-clip consistency."""
    still_fraction = args.still_fraction if args.still_weight else 0.0
    video, still = hold_still(video, still_fraction)
    posterior = vae.encode(video).latent_dist
    latents = posterior.sample(generator) if args.posterior == "sample" else posterior.mean
    reconstruction = decode_unclamped(vae, latents)  # (B, 3, T, H, W)
    squared = (reconstruction - video).square()
    mse = squared.mean()
    in_person = (squared * hold_still(person, still_fraction)[0]).mean() if args.person_weight and person is not None else 0.0
    l1 = (reconstruction - video).abs().mean()
    edge = sum(F.l1_loss(a, b) for a, b in zip(image_gradients(reconstruction), image_gradients(video)))
    kl = 0.5 * (posterior.mean.square() + posterior.var - 1 - posterior.logvar).mean()
    consistency = still_consistency(posterior.mean, still)
    loss = mse + args.person_weight * in_person + args.l1_weight * l1 + args.edge_weight * edge + args.kl_weight * kl + args.still_weight * consistency
    return loss, {"mse": mse.item(), "kl": kl.item(), "still": consistency.item()}


def batch_shapes(args: TrainVAEConfig, rng: np.random.Generator) -> tuple[int, int, int]:
    """(frames, side, batch size) of one step: random length, random crop side among those whose
    batch of MIN_BATCH stays under ``max_pixels_per_step``, batch from ``pixels_per_step``."""
    frames = int(rng.choice(args.train_frames))
    sides = [side for side in range(args.size[0], args.size[1] + 1, 16) if MIN_BATCH * frames * side * side <= args.max_pixels_per_step]
    side = int(rng.choice(sides or [args.size[0]]))
    return frames, side, max(MIN_BATCH, round(args.pixels_per_step / (frames * side * side)))


def train(vae: AutoencoderKLWan, samples: list[Sample], args: TrainVAEConfig) -> None:
    """AdamW with warm-up and cosine decay over ``args.steps`` random batches."""
    rng = np.random.default_rng(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    trained = trainable_parameters(vae, args.train_part)
    optimizer = torch.optim.AdamW(trained, lr=args.lr, weight_decay=1e-4)
    warmup = max(1, min(100, args.steps // 10))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / warmup) * (0.55 + 0.45 * math.cos(math.pi * step / args.steps))
    )
    vae.train()
    set_conv_memory_format(vae, torch.channels_last_3d)
    bar = tqdm(range(args.steps), desc="train tiny Wan VAE", unit="step")
    for _ in bar:
        frames, side, batch_size = batch_shapes(args, rng)
        video, person = random_batch(samples, rng, frames, side, batch_size)
        loss, parts = training_loss(vae, video.contiguous(memory_format=torch.channels_last_3d), generator, args, person)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        optimizer.step()
        schedule.step()
        bar.set_postfix(loss=f"{loss.item():.4f}", psnr=f"{-10 * math.log10(parts['mse'] / 4):.1f}", kl=f"{parts['kl']:.2f}", still=f"{parts['still']:.3f}")
    set_conv_memory_format(vae, torch.contiguous_format)
    vae.eval()


def trainable_parameters(vae: AutoencoderKLWan, part: str) -> list[torch.nn.Parameter]:
    """The parameters ``part`` trains; ``decoder`` freezes the encoder side (encoder, quant_conv), so the latent space stays init's.

    A decoder-only fine-tune (as Stable Diffusion's ft-MSE VAE) keeps every DiT trained on the
    init VAE's latents valid: encodings, latent statistics and latent caches are unchanged.
    """
    encoder_side = {id(p) for module in (vae.encoder, vae.quant_conv) for p in module.parameters()}
    for parameter in vae.parameters():
        parameter.requires_grad_(part == "all" or id(parameter) not in encoder_side)
    return [p for p in vae.parameters() if p.requires_grad]


def set_conv_memory_format(vae: AutoencoderKLWan, memory_format: torch.memory_format) -> None:
    """Lay out the 3-D conv weights channels-last (oneDNN's CPU backward is ~25% faster so) or back."""
    for parameter in vae.parameters():
        if parameter.dim() == 5:
            parameter.data = parameter.data.contiguous(memory_format=memory_format)


def clip_windows(samples: list[Sample], frames: int) -> list[tuple[Sample, int]]:
    """(sample, start) of every non-overlapping ``frames``-long window of the video samples."""
    return [(s, start) for s in samples for start in range(0, s.frames.shape[0] - frames + 1, frames)]


@torch.no_grad()
def latent_statistics(vae: AutoencoderKLWan, samples: list[Sample], clips: int = STATS_CLIPS) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of posterior means over up to ``clips`` 17-frame training windows."""
    windows = clip_windows(samples, EVAL_FRAMES)
    chosen = np.linspace(0, len(windows) - 1, min(clips, len(windows))).round().astype(int)
    latents = []
    for index in chosen:
        sample, start = windows[index]
        video = to_model_range(sample.frames[start : start + EVAL_FRAMES])[None]
        latents.append(vae.encode(video).latent_dist.mean.movedim(1, -1).reshape(-1, vae.config.z_dim))  # (F*h*w, z)
    stacked = torch.cat(latents).double()
    return stacked.mean(0).tolist(), stacked.std(0).tolist()


@torch.no_grad()
def reconstruct(vae: AutoencoderKLWan, frames: np.ndarray) -> np.ndarray:
    """uint8 (T, H, W, 3) -> its VAE reconstruction (posterior mean) as float (T, H, W, 3) in [0, 1]."""
    WAN.check_frames(frames.shape[0])
    video = to_model_range(frames)[None]  # (1, 3, T, H, W)
    decoded = vae.decode(vae.encode(video).latent_dist.mean).sample[0]  # (3, T, H, W)
    return decoded.clamp(-1, 1).add(1).div(2).movedim(0, -1).numpy()


def clip_psnr(vae: AutoencoderKLWan, frames: np.ndarray, person_mask: np.ndarray | None) -> tuple[float, float]:
    """Mean per-frame PSNR of a clip's reconstruction, over the frame and inside the person mask (NaN without one)."""
    target = torch.from_numpy(frames).float().div(255).permute(0, 3, 1, 2)  # (T, 3, H, W)
    generated = torch.from_numpy(reconstruct(vae, frames)).permute(0, 3, 1, 2)
    overall = frame_psnr(generated, target).mean().item()
    if person_mask is None:
        return overall, math.nan
    return overall, masked_frame_psnr(generated, target, torch.from_numpy(person_mask)).nanmean().item()


def evaluate(vae: AutoencoderKLWan, samples: list[Sample], max_clips: int | None = None) -> dict:
    """Held-out reconstruction PSNR on 17-frame windows: mean over clips, overall and inside the person mask."""
    windows = clip_windows(samples, EVAL_FRAMES)[:max_clips]
    if not windows:
        raise ValueError(f"no held-out video has {EVAL_FRAMES} frames")
    scores = np.array([clip_psnr(vae, s.frames[start : start + EVAL_FRAMES], None if s.person_mask is None else s.person_mask[start : start + EVAL_FRAMES]) for s, start in windows])
    return {"clips": len(windows), "psnr": float(scores[:, 0].mean()), "psnr_person": float(np.nanmean(scores[:, 1]))}


@torch.no_grad()
def encode_seconds(vae: AutoencoderKLWan, frames: int = EVAL_FRAMES, side: int = 128, repeats: int = 5) -> float:
    """Fastest of ``repeats`` encodes of one random (1, 3, frames, side, side) clip, in seconds."""
    video = torch.rand(1, 3, frames, side, side, generator=torch.Generator().manual_seed(0)) * 2 - 1
    vae.encode(video)
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        vae.encode(video)
        timings.append(time.perf_counter() - start)
    return min(timings)


def train_and_save(cfg: DictConfig) -> dict:
    """Train, normalise, evaluate and save; returns (and prints) the summary."""
    args = to_dataclass(TrainVAEConfig, cfg)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    directory = dataset_dir(args)
    train_samples = load_split(directory, "train")
    vae = build_vae(args)
    train(vae, train_samples, args)
    if args.train_part == "all":  # a frozen encoder keeps init's latent statistics exactly
        mean, std = latent_statistics(vae, train_samples)
        vae.register_to_config(latents_mean=mean, latents_std=std)
    save_diffusers(vae, args.out)
    train_seconds = time.perf_counter() - started
    summary = {
        "out": str(args.out),
        "wall_seconds": round(train_seconds, 1),
        "parameters": sum(p.numel() for p in vae.parameters()),
        "encoder_parameters": wan.vae_encoder_parameters(vae),
        "encode_seconds_17x128x128": round(encode_seconds(vae), 4),
        "eval_split": args.eval_split,
        **evaluate(vae, [s for s in load_split(directory, args.eval_split) if s.meta.get("kind") == "video"], args.eval_clips),
    }
    print(json.dumps(summary, indent=2))
    return summary


def main(argv: list[str] | None = None) -> dict:
    """Command-line entry point (``argv``: the ``key=value`` overrides; default: the process's arguments)."""
    return run(train_and_save, "train_vae", argv, errors=(ValueError,))


if __name__ == "__main__":
    main()
