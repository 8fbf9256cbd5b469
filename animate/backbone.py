"""The Wan video DiT and VAE from diffusers behind one packed forward shared by all methods.

Every method builds one latent sequence along time and says what each latent frame is
(:class:`PackedInput`): clean condition or memory frames carry flow time 0, target frames the
noise level being denoised. The backbone turns that into per-frame modulation (diffusers' Wan2.2
per-token timestep path, computed once per frame rather than per token), optional
channel-concatenated conditioning (Wan I2V style), additive token injections before block 0 or
after block k, per-sample keyword inputs for the blocks' self-attention processors (a method
that adds an attention branch, such as One-to-All's HRFA, installs its own processor, diffusers'
pattern), an attention mask, and RoPE with an explicit per-frame time index.

The block loop runs the parts of diffusers' ``WanTransformerBlock`` (norms, self- and
cross-attention through their attention processors, feed-forward) so that weights, processors
and LoRA targets stay diffusers'; every reach into diffusers' internals goes through
:mod:`animate.diffusers_wan`. While sampling, the loop can skip the blocks after block 0 on slowly
changing steps (:mod:`animate.step_cache`) and split every sequence over processes by frames
(:mod:`animate.parallel`, context parallel generation).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from animate import diffusers_wan as wan
from animate.flow import PREDICTIONS, velocity_from_sample
from animate.step_cache import FirstBlockCache
from common.files import atomic_torch_save
from common.geometry import WAN, Compression


@dataclass
class PackedInput:
    """One packed DiT input: latent frames with roles, conditions and injections."""

    latents: Tensor  # (B, C, F, h, w): noisy target frames and clean condition frames
    t: Tensor  # (B, F) flow time per latent frame in [0, 1]; 0 = clean condition / memory
    channel_cond: Tensor | None = None  # (B, Cc, F, h, w), concatenated on channels
    frame_ids: Tensor | None = None  # (B, F) RoPE time index per latent frame; default arange(F)
    injections: dict[int, Tensor] = field(default_factory=dict)  # block -> (B, L, D); -1 = before block 0
    attention_mask: Tensor | None = None  # (B, 1, L, L) bool, True = may attend
    attention_kwargs: dict[str, Tensor] = field(default_factory=dict)  # name -> (B, ...): keyword inputs of every block's self-attention processor
    context: Tensor | None = None  # (B, S, text_dim) text embedding; default: the cached empty prompt
    image_context: Tensor | None = None  # (B, S_img, image_dim) CLIP image features (Wan I2V / Animate), in front of the text
    block_hook: BlockHook | None = None  # a side branch that reads and updates the tokens after every block (ControlNet-style)


WAN_TEXT_LENGTH = 512  # umT5 tokens Wan pads every prompt to; diffusers' I2V attention assumes it


class BlockHook(Protocol):
    """A side branch run after every backbone block (after that block's injection), e.g. a ControlNet.

    It sees the tokens, the per-frame modulation and the RoPE of the forward, and returns the
    tokens to continue with; its own blocks can run through :func:`block_forward`.
    """

    def __call__(self, index: int, hidden_states: Tensor, modulation: Tensor, rotary_emb: tuple[Tensor, Tensor]) -> Tensor:
        """(B, L, D) tokens after block ``index`` -> (B, L, D)."""


def rotary_embedding(rope: nn.Module, frame_ids: Tensor, height: int, width: int) -> tuple[Tensor, Tensor]:
    """Wan 3D RoPE cos/sin (B, L, 1, head_dim) for a token grid with explicit frame indices."""
    (cos_t, cos_h, cos_w), (sin_t, sin_h, sin_w) = wan.rope_tables(rope)
    b, f = frame_ids.shape
    ids = frame_ids.long().to(cos_t.device)

    def grid(t_part: Tensor, h_part: Tensor, w_part: Tensor) -> Tensor:
        t_part = t_part[ids].view(b, f, 1, 1, -1).expand(b, f, height, width, -1)
        h_part = h_part[:height].view(1, 1, height, 1, -1).expand(b, f, height, width, -1)
        w_part = w_part[:width].view(1, 1, 1, width, -1).expand(b, f, height, width, -1)
        return torch.cat([t_part, h_part, w_part], dim=-1).reshape(b, f * height * width, 1, -1)

    return grid(cos_t, cos_h, cos_w), grid(sin_t, sin_h, sin_w)


def _per_frame(x: Tensor, frames: int) -> Tensor:
    """(B, L, D) -> (B, F, L/F, D) view for per-frame modulation."""
    return x.unflatten(1, (frames, -1))


def block_forward(
    block: nn.Module,
    hidden_states: Tensor,  # (B, L, D)
    context: Tensor | None,  # (B, S, D)
    modulation: Tensor,  # (B, F, 6, D) float32, per frame
    rotary_emb: tuple[Tensor, Tensor],
    attention_mask: Tensor | None = None,
    attention_kwargs: dict[str, Tensor] | None = None,
) -> Tensor:
    """A diffusers WanTransformerBlock with per-frame modulation, a mask and the processors' keyword inputs.

    A text-free block (cross-attention stripped, :func:`animate.diffusers_wan.strip_cross_attention`) skips the text.
    """
    frames = modulation.shape[1]
    shift, scale, gate, c_shift, c_scale, c_gate = wan.block_modulation(block, modulation)  # each (B, F, 1, D)

    def modulate(normed: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
        return (_per_frame(normed, frames) * (1 + scale) + shift).flatten(1, 2).type_as(hidden_states)

    def gated(x: Tensor, update: Tensor, gate: Tensor) -> Tensor:
        y = _per_frame(x.float(), frames) + _per_frame(update.float(), frames) * gate
        return y.flatten(1, 2).type_as(x)

    norm_hidden_states = modulate(wan.self_attention_norm(block, hidden_states), shift, scale)
    attn_output = wan.self_attention(block, norm_hidden_states, attention_mask, rotary_emb, **(attention_kwargs or {}))
    hidden_states = gated(hidden_states, attn_output, gate)
    if wan.has_cross_attention(block):
        hidden_states = hidden_states + wan.cross_attention(block, hidden_states, context)
    norm_hidden_states = modulate(wan.feed_forward_norm(block, hidden_states), c_shift, c_scale)
    return gated(hidden_states, wan.feed_forward(block, norm_hidden_states), c_gate)


def compression_of(transformer: nn.Module, vae: VideoAutoencoder | None = None) -> Compression:
    """The pixel -> latent -> token compression of a transformer and VAE (Wan's 8x VAE when there is none)."""
    pt, ph, pw = wan.patch_size(transformer)
    if ph != pw:
        raise ValueError(f"transformer patch_size {[pt, ph, pw]}: the framework needs square spatial patches")
    vae_time, vae_space = (WAN.vae_time, WAN.vae_space) if vae is None else (vae.time_compression, vae.space_compression)
    return Compression(vae_time=vae_time, vae_space=vae_space, patch_time=pt, patch_space=ph)


class WanBackbone(nn.Module):
    """Wan transformer (+ optional VAE) with the packed forward every method uses."""

    def __init__(
        self,
        transformer: nn.Module,
        vae: VideoAutoencoder | None = None,
        text_embedding: Tensor | None = None,
        gradient_checkpointing: bool = False,
        compression: Compression | None = None,
        pretrained: Iterable[str] = (),
        prediction: str = "velocity",
        prediction_min_time: float = 0.05,
        image_encoder: nn.Module | None = None,
    ):
        super().__init__()
        if prediction not in PREDICTIONS:
            raise ValueError(f"backbone.prediction={prediction!r}: use one of {', '.join(PREDICTIONS)}")
        self.transformer = transformer
        self.prediction = prediction  # what the network outputs: Wan's velocity, or the clean sample x0
        self.prediction_min_time = prediction_min_time
        self.pretrained = frozenset(pretrained)  # transformer parameter names loaded unchanged from a checkpoint
        self.vae = vae
        self.image_encoder = image_encoder  # CLIP tokens of the reference for I2V / Animate transformers (animate.image_encoder), frozen
        if image_encoder is not None:
            image_encoder.requires_grad_(False)
        self.compression = compression or compression_of(transformer, vae)
        self.gradient_checkpointing = gradient_checkpointing
        self.step_cache: FirstBlockCache | None = None  # set by caching() while sampling
        self.context_parallel = None  # an animate.parallel.ContextParallel: this rank's share of every sequence
        self.offload_blocks = False  # sequential CPU offload (animate.parallel.BlockOffloadStrategy): blocks live in host memory, each visits the GPU in turn
        if text_embedding is None:
            text_embedding = torch.zeros(1, 1, transformer.config.text_dim)
        self.register_buffer("text_embedding", text_embedding, persistent=False)  # (1, S, text_dim)

    def pretrained_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """(name, parameter) of the transformer weights that came from a checkpoint as they were (not widened, not new)."""
        return ((name, p) for name, p in self.transformer.named_parameters() if name in self.pretrained)

    @property
    def dim(self) -> int:
        """Token width D."""
        cfg = self.transformer.config
        return cfg.num_attention_heads * cfg.attention_head_dim

    @property
    def takes_image_tokens(self) -> bool:
        """Whether the transformer has an image cross-attention (Wan I2V, Wan2.2-Animate: ``image_dim``)."""
        return self.transformer.config.get("image_dim") is not None

    @property
    def num_blocks(self) -> int:
        """Number of DiT blocks."""
        return len(self.transformer.blocks)

    @property
    def latent_channels(self) -> int:
        """Channels of the predicted velocity."""
        return self.transformer.config.out_channels

    @property
    def in_channels(self) -> int:
        """Channels the patch embedding expects (latents + channel conditioning)."""
        return self.transformer.config.in_channels

    def embed(self, packed: PackedInput) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Patchify and embed: tokens (B, L, D), temb (B, F, D), modulation (B, F, 6, D), context."""
        x = packed.latents
        if packed.channel_cond is not None:
            x = torch.cat([x, packed.channel_cond.to(x.dtype)], dim=1)
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f"packed input has {x.shape[1]} channels (latents + channel_cond) but the transformer's "
                f"patch embedding expects {self.in_channels}: set backbone.transformer.in_channels"
            )
        tokens = wan.patchify(self.transformer, x)
        b = packed.t.shape[0]
        context = packed.context if packed.context is not None else self.text_embedding.expand(b, -1, -1)
        image = None if packed.image_context is None else packed.image_context.to(tokens.dtype)
        if image is not None and context.shape[1] != WAN_TEXT_LENGTH:
            raise ValueError(f"the text embedding has {context.shape[1]} tokens: with CLIP image tokens it must have {WAN_TEXT_LENGTH} "
                             f"(diffusers' Wan attention splits image from text by that count): set backbone.text.length={WAN_TEXT_LENGTH}")
        temb, modulation, context = wan.embed_conditions(self.transformer, packed.t, context.to(tokens.dtype), image)
        return tokens, temb, modulation, context

    @torch.no_grad()
    def clean_modulation(self) -> Tensor:
        """The blocks' timestep modulation (6, D) at t = 0: what a clean frame is modulated with."""
        t = torch.zeros(1, 1, device=self.text_embedding.device)
        _, modulation, _ = wan.embed_conditions(self.transformer, t, self.text_embedding.to(wan.patchify_dtype(self.transformer)))
        return modulation[0, 0].float()

    def rotary(self, frame_ids: Tensor, height: int, width: int) -> tuple[Tensor, Tensor]:
        """RoPE (B, F*h*w, 1, head_dim) of a token grid whose frames have time indices ``frame_ids`` (B, F)."""
        return rotary_embedding(self.transformer.rope, frame_ids, height, width)

    def forward(self, packed: PackedInput) -> Tensor:
        """Velocity (B, C_out, F, h, w) for a packed input (from the predicted x0 when ``prediction="sample"``)."""
        b, _, f, h, w = packed.latents.shape
        gf, gh, gw = self.grid(packed.latents)
        frame_ids = packed.frame_ids
        if frame_ids is None:
            frame_ids = torch.arange(f, device=packed.latents.device).expand(b, f)
        rotary_emb = rotary_embedding(self.transformer.rope, frame_ids, gh, gw)
        hidden_states, temb, modulation, context = self.embed(packed)
        if self.context_parallel is not None:  # this rank's frames of every per-token and per-frame input
            hidden_states, rotary_emb, temb, modulation, packed = self._shard_frames(hidden_states, rotary_emb, temb, modulation, packed, gf)
        hidden_states = self._inject(hidden_states, packed, -1)
        cache = self.step_cache
        if cache is not None and self.context_parallel is not None:
            raise ValueError("step caching with context parallel: the ranks would decide to skip blocks apart; use one of them")
        for index, block in enumerate(self.transformer.blocks):
            block = self._onload(block, hidden_states.device)
            args = (block, hidden_states, context, modulation, rotary_emb, packed.attention_mask, packed.attention_kwargs)
            if self.gradient_checkpointing and torch.is_grad_enabled():
                update = checkpoint(block_forward, *args, use_reentrant=False)
            else:
                update = block_forward(*args)
            update = self._inject(update, packed, index)
            if packed.block_hook is not None:
                update = packed.block_hook(index, update, modulation, rotary_emb)
            if cache is not None and index == 0:
                first_residual, after_first = update - hidden_states, update
                if cache.can_reuse(first_residual):
                    hidden_states = cache.reuse(update)
                    self._offload(block)
                    break
            hidden_states = update
            self._offload(block)
        else:
            if cache is not None:
                cache.store(first_residual, hidden_states - after_first)
        output = wan.output_head(self.transformer, hidden_states, temb)  # (B, L, p*C)
        if self.context_parallel is not None:
            output = self._gather_frames(output)
        output = self.unpatchify(output, gf, gh, gw)
        if self.prediction == "sample":
            return velocity_from_sample(packed.latents, output, packed.t, self.prediction_min_time)
        return output

    def _onload(self, block: nn.Module, device: torch.device) -> nn.Module:
        """Sequential offload (``offload_blocks``): the block's weights to the compute device for its turn."""
        if self.offload_blocks:
            block.to(device, non_blocking=True)
        return block

    def _offload(self, block: nn.Module) -> None:
        """Sequential offload: the block's weights back to host memory once it has run."""
        if self.offload_blocks:
            block.to("cpu", non_blocking=True)

    def _shard_frames(self, hidden_states: Tensor, rotary_emb: tuple[Tensor, Tensor], temb: Tensor, modulation: Tensor,
                      packed: PackedInput, frames: int) -> tuple:
        """Context parallel: tokens (B, L, D), RoPE, temb (B, F, D), modulation (B, F, 6, D) and injections cut to this rank's frames."""
        cp = self.context_parallel
        if torch.is_grad_enabled():
            raise RuntimeError("context parallel runs generation only (torch.no_grad); train with trainer=fsdp or deepspeed")
        if packed.attention_mask is not None or packed.block_hook is not None:
            raise ValueError("context parallel: an attention mask or a block hook (One-to-All's pose control, Animate's face adapter) "
                             "is not split over the sequence yet")
        keep = cp.frames(frames)
        per_frame = hidden_states.shape[1] // frames
        tokens = slice(keep.start * per_frame, keep.stop * per_frame)
        cos, sin = rotary_emb
        injections = {index: extra[:, tokens] for index, extra in packed.injections.items()}
        packed = dataclasses.replace(packed, injections=injections)
        return hidden_states[:, tokens], (cos[:, tokens], sin[:, tokens]), temb[:, keep], modulation[:, keep], packed

    def _gather_frames(self, output: Tensor) -> Tensor:
        """Context parallel: every rank's output tokens (B, L / n, E), joined in frame order (B, L, E)."""
        import torch.distributed as dist

        cp = self.context_parallel
        parts = [torch.empty_like(output) for _ in range(cp.size)]
        dist.all_gather(parts, output.contiguous(), group=cp.group)
        return torch.cat(parts, dim=1)

    @contextmanager
    def caching(self, cache: FirstBlockCache | None) -> Iterator[None]:
        """Run the forwards inside the block with ``cache`` (step caching while sampling, :mod:`animate.step_cache`)."""
        previous, self.step_cache = self.step_cache, cache
        try:
            yield
        finally:
            self.step_cache = previous

    def grid(self, latents: Tensor) -> tuple[int, int, int]:
        """Token grid (f, h, w) of latents (B, C, F, H, W) under the transformer's patch size."""
        pt, ph, pw = wan.patch_size(self.transformer)
        _, _, f, h, w = latents.shape
        return f // pt, h // ph, w // pw

    @staticmethod
    def _inject(hidden_states: Tensor, packed: PackedInput, index: int) -> Tensor:
        """Add the token injection keyed by ``index`` if there is one."""
        extra = packed.injections.get(index)
        return hidden_states if extra is None else hidden_states + extra.to(hidden_states.dtype)

    def unpatchify(self, x: Tensor, f: int, h: int, w: int) -> Tensor:
        """(B, L, pt*ph*pw*C) -> (B, C, F, H, W)."""
        pt, ph, pw = wan.patch_size(self.transformer)
        b = x.shape[0]
        x = x.reshape(b, f, h, w, pt, ph, pw, -1).permute(0, 7, 1, 4, 2, 5, 3, 6)
        return x.reshape(b, -1, f * pt, h * ph, w * pw)

    def enable_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Recompute block activations in backward to save memory."""
        self.gradient_checkpointing = enabled


class VideoAutoencoder(nn.Module):
    """diffusers' AutoencoderKLWan with latent normalisation; videos in [-1, 1]."""

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae
        cfg = vae.config
        z = cfg.z_dim
        mean = torch.tensor(cfg.latents_mean[:z] if cfg.latents_mean else [0.0] * z).view(1, z, 1, 1, 1)
        std = torch.tensor(cfg.latents_std[:z] if cfg.latents_std else [1.0] * z).view(1, z, 1, 1, 1)
        self.register_buffer("latents_mean", mean, persistent=False)
        self.register_buffer("latents_std", std, persistent=False)

    @property
    def latent_channels(self) -> int:
        """Latent channels (16 for Wan2.1)."""
        return self.vae.config.z_dim

    @property
    def space_compression(self) -> int:
        """Pixels per latent side (Wan2.1: 8)."""
        return int(self.vae.config.scale_factor_spatial or 2 ** len(self.vae.config.temperal_downsample))

    @property
    def time_compression(self) -> int:
        """Pixel frames per latent frame after the first (Wan: 4)."""
        return int(self.vae.config.scale_factor_temporal or 2 ** sum(self.vae.config.temperal_downsample))

    @torch.no_grad()
    def fingerprint(self) -> str:
        """A hash of the weights and config: latent caches are valid for this VAE only."""
        digest = hashlib.sha1(repr(sorted(self.vae.config.items())).encode())
        for name, tensor in sorted(self.vae.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().float().cpu().numpy().tobytes())
        return digest.hexdigest()[:16]

    @torch.no_grad()
    def encode(self, video: Tensor) -> Tensor:
        """(B, 3, T, H, W) in [-1, 1] -> normalised posterior mean (B, z, 1 + (T-1)/4, H/s, W/s), s the spatial compression."""
        WAN.check_frames(video.shape[2])
        dtype = next(self.vae.parameters()).dtype
        mean = self.vae.encode(video.to(dtype)).latent_dist.mode()
        return ((mean.float() - self.latents_mean) / self.latents_std)

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        """Normalised latents -> video (B, 3, T, H, W) clamped to [-1, 1]."""
        dtype = next(self.vae.parameters()).dtype
        z = latents.float() * self.latents_std + self.latents_mean
        return self.vae.decode(z.to(dtype)).sample.float().clamp(-1, 1)


def seeded_text_embedding(text_dim: int, length: int, seed: int = 0) -> Tensor:
    """A fixed stand-in for the empty-prompt embedding when no text encoder is configured."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(1, length, text_dim, generator=generator)


def empty_prompt_embedding(
    text_dim: int,
    length: int = 512,
    text_encoder: str | None = None,
    cache_dir: str | None = None,
    prompt: str = "",
    seed: int = 0,
) -> Tensor:
    """Embedding (1, length, text_dim) of a fixed prompt, computed once and cached on disk.

    With ``text_encoder`` (a local directory holding a UMT5 encoder and its tokenizer, as in
    Wan's ``google/umt5-xxl``), the prompt is encoded like Wan does: tokens padded to ``length``,
    embeddings past the prompt's own tokens set to zero. Without it, a seeded random tensor stands
    in (the tiny default backbone was never trained with a text encoder).
    """
    if text_encoder is None:
        return seeded_text_embedding(text_dim, length, seed)
    key = hashlib.sha1(f"{Path(text_encoder).resolve()}|{prompt}|{length}".encode()).hexdigest()[:16]
    cache = Path(cache_dir or Path(text_encoder) / ".prompt_cache") / f"{key}.pt"
    if cache.exists():
        return torch.load(cache, weights_only=True)
    embedding = encode_prompt(text_encoder, prompt, length)
    if embedding.shape[-1] != text_dim:
        raise ValueError(f"text encoder {text_encoder} gives width {embedding.shape[-1]}, backbone text_dim is {text_dim}")
    atomic_torch_save(cache, embedding)
    return embedding


@torch.no_grad()
def encode_prompt(text_encoder: str, prompt: str, length: int) -> Tensor:
    """Run a local UMT5 encoder on ``prompt``: (1, length, dim), zero past the prompt's tokens."""
    from transformers import AutoTokenizer, UMT5EncoderModel

    path = Path(text_encoder)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"text encoder directory {path} has no config.json (expected a local UMT5 encoder)")
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    encoder = UMT5EncoderModel.from_pretrained(path, local_files_only=True).eval()
    tokens = tokenizer([prompt], padding="max_length", max_length=length, truncation=True, return_tensors="pt")
    hidden = encoder(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask).last_hidden_state
    return hidden * tokens.attention_mask.unsqueeze(-1).to(hidden.dtype)


def build_transformer(kind: str = "wan", **config) -> nn.Module:
    """A randomly initialised diffusers WanTransformer3DModel (``kind="wan"``) or WanAnimateTransformer3DModel (``"animate"``) from keyword config."""
    return wan.new_transformer(kind, **config)


@torch.no_grad()
def widened_patch_embedding(source: nn.Conv3d, in_channels: int) -> nn.Conv3d:
    """A copy of a patch embedding taking ``in_channels``: the source's channels first, the added ones at zero."""
    if in_channels < source.in_channels:
        raise ValueError(f"cannot shrink the patch embedding from {source.in_channels} to {in_channels} channels")
    layer = nn.Conv3d(in_channels, source.out_channels, source.kernel_size, source.stride).to(source.weight)
    layer.weight.zero_()
    layer.weight[:, : source.in_channels] = source.weight
    layer.bias.copy_(source.bias)
    return layer


ANIMATE_FROM_BASE_KEYS = ("patch_size", "num_attention_heads", "attention_head_dim", "text_dim", "freq_dim", "ffn_dim", "num_layers",
                          "cross_attn_norm", "qk_norm", "eps", "rope_max_seq_len")


@torch.no_grad()
def animate_from_base(base: nn.Module, **animate: object) -> tuple[nn.Module, set[str]]:
    """A WanAnimateTransformer3DModel that starts as a T2V ``base``: its blocks, embedders and head copied, and the set of copied keys.

    The patch embedding is widened to Animate's 2C + 4 input channels (the added ones at zero);
    the pose patch embedding and every face adapter's output start at zero, so at initialisation
    the Animate model's velocity is the base's. ``animate``: the Animate-only settings (motion and
    face encoder sizes, ``inject_face_latents_blocks``, ``image_dim``).
    """
    latent = base.config.in_channels
    config = {key: base.config[key] for key in ANIMATE_FROM_BASE_KEYS} | {"in_channels": 2 * latent + 4, "latent_channels": latent,
                                                                         "out_channels": base.config.out_channels, "image_dim": None} | animate
    model = build_transformer("animate", **config).to(base.patch_embedding.weight)
    state = dict(base.state_dict())
    state["patch_embedding.weight"] = widened_patch_embedding(base.patch_embedding, 2 * latent + 4).weight
    target = model.state_dict()
    shared = {key: value for key, value in state.items() if key in target and target[key].shape == value.shape}
    skipped = sorted(set(state) - set(shared))
    if skipped:
        raise ValueError(f"the base's weights {skipped[:3]} do not fit the Animate transformer: keep its architecture keys")
    model.load_state_dict(shared, strict=False)
    nn.init.zeros_(model.pose_patch_embedding.weight)
    nn.init.zeros_(model.pose_patch_embedding.bias)
    for adapter in model.face_adapter:
        nn.init.zeros_(adapter.to_out.weight)
        nn.init.zeros_(adapter.to_out.bias)
    return model, set(shared) - {"patch_embedding.weight"}


def expand_patch_embedding(transformer: nn.Module, in_channels: int) -> nn.Module:
    """Widen the patch embedding to ``in_channels``; new input channels start at zero."""
    if transformer.patch_embedding.in_channels != in_channels:
        wan.set_in_channels(transformer, widened_patch_embedding(transformer.patch_embedding, in_channels))
    return transformer

ASSETS = Path(__file__).parent / "assets"


PREDICTION_FILE_SUFFIX = ".prediction.json"


def prediction_file(weights: str | Path) -> Path:
    """The sidecar that records what exported weights predict: ``DIR/transformer.prediction.json`` or ``FILE.prediction.json``."""
    weights = Path(weights)
    return weights / f"transformer{PREDICTION_FILE_SUFFIX}" if weights.is_dir() or not weights.suffix else weights.with_name(weights.name + PREDICTION_FILE_SUFFIX)


def check_prediction(weights: Path, prediction: str) -> None:
    """Refuse weights whose sidecar says they were trained for another parametrisation than the config's."""
    sidecar = prediction_file(weights)
    if sidecar.is_file():
        stored = json.loads(sidecar.read_text()).get("prediction")
        if stored != prediction:
            raise ValueError(
                f"{weights}: these weights predict the {stored} ({sidecar}), the config says backbone.prediction={prediction}; "
                f"set backbone.prediction={stored}"
            )


def resolve_path(path: str) -> Path:
    """``asset:NAME`` -> the file shipped in ``animate/assets``; other paths unchanged."""
    return ASSETS / path.removeprefix("asset:") if path.startswith("asset:") else Path(path).expanduser()


def load_backbone(
    transformer: dict,
    vae: dict | None = None,
    text: dict | None = None,
    gradient_checkpointing: bool = False,
    init_seed: int = 0,
    prediction: str = "velocity",
    prediction_min_time: float = 0.05,
    image_encoder: dict | None = None,
    attention_backend: str | None = None,
) -> WanBackbone:
    """Build the backbone from config: local weights (``path``) or a seeded random ``architecture``.

    transformer: ``path`` (diffusers dir or original Wan file/dir; a WanAnimateTransformer3DModel
      config loads Wan2.2-Animate), ``config`` (diffusers config dir, needed for the original layout),
      ``kind`` (``wan`` or ``animate``) and ``architecture`` (its kwargs, used when ``path`` is null), ``in_channels`` (widen the patch embedding, e.g. T2V 16 -> I2V-style 36).
    vae: ``path`` and ``config`` likewise (``asset:tiny_wan_vae`` is the shipped tiny VAE), or an
      ``architecture`` (AutoencoderKLWan's kwargs) when ``path`` is null; ``tiling``: true (or diffusers'
      ``enable_tiling`` sizes) encodes and decodes in overlapping spatial tiles, bounding their memory.
    text: ``encoder`` (local UMT5 dir or null), ``length``, ``cache_dir``, ``prompt``, ``seed``.
    prediction: what the network outputs, ``velocity`` (Wan) or ``sample`` (x0); a property of the
      weights, so it must match how they were trained.
    image_encoder: for a transformer with an image cross-attention (I2V, Animate): ``path`` (Wan's
      ``image_encoder/``), ``processor`` (``image_processor/``), or an ``architecture`` (CLIPVisionConfig
      keywords) when ``path`` is null; ``skip: true`` runs without image tokens (refused otherwise).
    attention_backend: null (diffusers' default, PyTorch's SDPA), ``auto`` (the fastest exact kernel installed:
      FlashAttention-3 on Hopper, FlashAttention-2) or a diffusers backend name (``flash``, ``_native_cudnn``, ...).
    """
    from animate.weights import load_transformer, load_vae

    torch.manual_seed(init_seed)  # a random base (tiny default) is reproducible from the config alone
    if transformer.get("path"):
        check_prediction(resolve_path(transformer["path"]), prediction)
        model = load_transformer(resolve_path(transformer["path"]), config=transformer.get("config")).train()  # as built: from_pretrained returns eval mode
    else:
        model = build_transformer(transformer.get("kind", "wan"), **transformer["architecture"])
    if attention_backend:
        try:
            wan.set_attention_backend(model, attention_backend)
        except (ValueError, RuntimeError) as error:
            raise ValueError(f"backbone.attention_backend={attention_backend}: {error}") from None
    pretrained = {name for name, _ in model.named_parameters()} if transformer.get("path") else set()
    if transformer.get("kind") == "animate" and not wan.is_animate(model):  # Animate grown from a T2V base (the tiny default)
        model, pretrained = animate_from_base(model, **dict(transformer.get("animate") or {}))
    if transformer.get("in_channels") and transformer["in_channels"] != model.config.in_channels:
        expand_patch_embedding(model, transformer["in_channels"])
        pretrained -= {"patch_embedding.weight"}  # partly new: its added input channels start at zero
    autoencoder = None
    if vae and vae.get("path"):
        autoencoder = VideoAutoencoder(load_vae(resolve_path(vae["path"]), config=vae.get("config"))).eval()
    elif vae and vae.get("architecture"):
        autoencoder = VideoAutoencoder(wan.new_vae(**vae["architecture"])).eval()
    if autoencoder is not None and vae.get("tiling"):
        autoencoder.vae.enable_tiling(**dict(vae["tiling"]) if isinstance(vae["tiling"], dict) else {})  # diffusers' overlapping spatial tiles
    clip = reference_image_encoder(model, dict(image_encoder or {}))
    text = dict(encoder=None, length=512, cache_dir=None, prompt="", seed=0) | dict(text or {})
    embedding = empty_prompt_embedding(
        model.config.text_dim, text["length"], text["encoder"], text["cache_dir"], text["prompt"], text["seed"]
    )
    return WanBackbone(
        model,
        autoencoder,
        embedding,
        gradient_checkpointing=gradient_checkpointing,
        pretrained=pretrained,
        prediction=prediction,
        prediction_min_time=prediction_min_time,
        image_encoder=clip,
    )


def reference_image_encoder(transformer: nn.Module, cfg: dict) -> nn.Module | None:
    """The CLIP image encoder a transformer with an image cross-attention needs (None for one without, or with ``skip``)."""
    from animate.image_encoder import load_image_encoder, new_image_encoder

    image_dim = transformer.config.get("image_dim")
    if image_dim is None or cfg.get("skip"):
        return None
    if cfg.get("path"):
        encoder = load_image_encoder(resolve_path(cfg["path"]), cfg.get("processor") and resolve_path(cfg["processor"]))
    elif cfg.get("architecture"):
        encoder = new_image_encoder(**cfg["architecture"])
    else:
        raise ValueError(
            f"the transformer has an image cross-attention (image_dim={image_dim}: Wan I2V / Animate) and no image encoder is configured: "
            f"set backbone.image_encoder.path=DIR (the release's image_encoder/, with .processor=DIR/image_processor), "
            f"or backbone.image_encoder.skip=true to run its image cross-attention without the reference's CLIP tokens"
        )
    if encoder.dim != image_dim:
        raise ValueError(f"backbone.image_encoder gives {encoder.dim}-wide tokens, the transformer's image_dim is {image_dim}")
    return encoder
