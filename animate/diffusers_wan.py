"""The one place that reaches into diffusers' Wan internals; everything else calls these functions.

The packed forward (:mod:`animate.backbone`) runs diffusers' own Wan modules (patch embedding,
condition embedder, blocks' norms, attentions and feed-forward, output head) in its own loop, and
the tiny VAE's trainer (experiments/train_vae.py) decodes without the output clamp and
initialises residual branches, so both depend on attribute names and call signatures that are
not diffusers' public API. Those dependencies are listed here and checked against the tested
diffusers range at import: an unsupported diffusers is a one-line ImportError, not an
AttributeError deep inside a forward. (Weight-layout conversion uses diffusers' single-file
converters, in :mod:`animate.weights`.)
"""

from __future__ import annotations

from importlib.metadata import version

import torch
from packaging.specifiers import SpecifierSet
from packaging.version import Version
from torch import Tensor, nn

SUPPORTED_DIFFUSERS = SpecifierSet(">=0.35,<0.43")  # = pyproject.toml's pin; model tests pass on 0.35.2, the whole suite on 0.42.1
TIMESTEP_SCALE = 1000.0  # Wan's timestep embedding takes t in [0, 1000]


def check_diffusers_version(installed: str | None = None) -> str:
    """The installed diffusers version; ImportError naming the supported range if outside it."""
    installed = installed or version("diffusers")
    if Version(installed) not in SUPPORTED_DIFFUSERS:
        raise ImportError(
            f"diffusers {installed} is not supported: animate-dit's Wan adapter (animate/diffusers_wan.py) is tested "
            f"with diffusers{SUPPORTED_DIFFUSERS}; install it with pip install 'diffusers{SUPPORTED_DIFFUSERS}'"
        )
    return installed


check_diffusers_version()


def rope_tables(rope: nn.Module) -> tuple[tuple[Tensor, Tensor, Tensor], tuple[Tensor, Tensor, Tensor]]:
    """Wan's 3D RoPE tables split into (time, height, width) parts: cos parts, sin parts, each (max_len, dim_k)."""
    if hasattr(rope, "t_dim"):  # newer diffusers record the split
        split = [rope.t_dim, rope.h_dim, rope.w_dim]
    else:  # 0.35 builds the tables with this split (its forward's own split differs unless head_dim % 6 == 0)
        space = 2 * (rope.attention_head_dim // 6)
        split = [rope.attention_head_dim - 2 * space, space, space]
    return rope.freqs_cos.split(split, dim=1), rope.freqs_sin.split(split, dim=1)


def patchify(model: nn.Module, latents: Tensor) -> Tensor:
    """Patch-embed (B, C, F, h, w) latents to tokens (B, L, D)."""
    embedding = model.patch_embedding
    return embedding(latents.to(embedding.weight.dtype)).flatten(2).transpose(1, 2).contiguous()


def patchify_dtype(model: nn.Module) -> torch.dtype:
    """The dtype the transformer's weights are in."""
    return model.patch_embedding.weight.dtype


def embed_conditions(model: nn.Module, t: Tensor, context: Tensor, image: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Per-frame time t (B, F) in [0, 1] and text (B, S, text_dim) -> temb (B, F, D), modulation (B, F, 6, D), context (B, S, D).

    Uses the condition embedder's per-token path (Wan2.2 ``timestep_seq_len``), once per frame.
    ``image`` (B, S_img, image_dim): CLIP image features (Wan I2V / Animate), embedded and put in front of the text.
    """
    b, f = t.shape
    temb, timestep_proj, context, image = model.condition_embedder(t.flatten() * TIMESTEP_SCALE, context, image, timestep_seq_len=f)
    if image is not None:
        context = torch.cat([image, context], dim=1)
    return temb, timestep_proj.unflatten(2, (6, -1)).float(), context


def is_animate(model: nn.Module) -> bool:
    """Whether a transformer is Wan2.2-Animate's (pose patch embedding, face adapter)."""
    return hasattr(model, "face_adapter") and hasattr(model, "motion_encoder")


def face_motion(model: nn.Module, face_pixels: Tensor) -> Tensor:
    """Wan-Animate's face motion tokens (B, T', N + 1, D) of face crops (B, 3, S, size, size) in [-1, 1]: motion encoder, then face encoder (4x fewer frames)."""
    b, c, s, h, w = face_pixels.shape
    frames = face_pixels.permute(0, 2, 1, 3, 4).reshape(-1, c, h, w)
    vectors = torch.cat([model.motion_encoder(chunk) for chunk in frames.split(model.config.motion_encoder_batch_size)])
    return model.face_encoder(vectors.view(b, s, -1))


def face_adapter_every(model: nn.Module) -> int:
    """After which blocks Wan-Animate's face adapter runs: block i with i % every == 0."""
    return model.config.inject_face_latents_blocks


def face_adapter_output(model: nn.Module, index: int, hidden_states: Tensor, motion: Tensor) -> Tensor:
    """The face adapter's update after block ``index`` (a multiple of :func:`face_adapter_every`) for tokens (B, L, D) and motion (B, F, N + 1, D)."""
    return model.face_adapter[index // face_adapter_every(model)](hidden_states, motion)


def block_modulation(block: nn.Module, modulation: Tensor) -> tuple[Tensor, ...]:
    """A block's (shift, scale, gate, c_shift, c_scale, c_gate), each (B, F, 1, D), from modulation (B, F, 6, D)."""
    return (block.scale_shift_table.unsqueeze(0) + modulation).unsqueeze(2).unbind(3)


def self_attention_norm(block: nn.Module, hidden_states: Tensor) -> Tensor:
    """The block's norm before self-attention (float32, no affine)."""
    return block.norm1(hidden_states.float())


def self_attention(block: nn.Module, hidden_states: Tensor, attention_mask: Tensor | None, rotary_emb: tuple[Tensor, Tensor], **kwargs: Tensor) -> Tensor:
    """The block's self-attention through its attention processor; ``kwargs`` go to the processor (``WanAttention`` passes them on)."""
    return block.attn1(hidden_states, None, attention_mask, rotary_emb, **kwargs)


def self_attention_processor() -> object:
    """A fresh default Wan attention processor (what a copied block's self-attention runs)."""
    from diffusers.models.transformers.transformer_wan import WanAttnProcessor

    return WanAttnProcessor()


def set_self_attention_processor(block: nn.Module, processor: object) -> None:
    """Install ``processor`` as the block's self-attention processor (an ``nn.Module`` processor registers as a submodule)."""
    block.attn1.set_processor(processor)


def self_attention_heads(attn: nn.Module, hidden_states: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Q, K, V (B, L, heads, head_dim) of a self-attention, Q and K through its RMS norms (no RoPE yet)."""
    query = attn.norm_q(attn.to_q(hidden_states)).unflatten(2, (attn.heads, -1))
    key = attn.norm_k(attn.to_k(hidden_states)).unflatten(2, (attn.heads, -1))
    return query, key, attn.to_v(hidden_states).unflatten(2, (attn.heads, -1))


def apply_rotary_emb(hidden_states: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Wan's RoPE on (B, L, heads, head_dim) with interleaved (cos, sin) tables (B, L, 1, head_dim), as its processor applies it."""
    x1, x2 = hidden_states.unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = cos[..., 0::2], sin[..., 1::2]
    out = torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)
    return out.type_as(hidden_states)


def attention(query: Tensor, key: Tensor, value: Tensor, attention_mask: Tensor | None = None, backend: object = None) -> Tensor:
    """Softmax attention of (B, L, heads, d) tensors through diffusers' dispatcher (its configured backend): (B, L, heads * d)."""
    from diffusers.models.attention_dispatch import dispatch_attention_fn

    out = dispatch_attention_fn(query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False, backend=backend)
    return out.flatten(2, 3).type_as(query)


def attention_output(attn: nn.Module, hidden_states: Tensor) -> Tensor:
    """The attention's output projection (and its dropout)."""
    return attn.to_out[1](attn.to_out[0](hidden_states))


def strip_cross_attention(block: nn.Module) -> nn.Module:
    """Remove a (copied) block's text cross-attention and its norm: a text-free block."""
    block.attn2 = None
    block.norm2 = None
    return block


def has_cross_attention(block: nn.Module) -> bool:
    """Whether a block attends to the text (a stripped copy does not)."""
    return block.attn2 is not None


def cross_attention(block: nn.Module, hidden_states: Tensor, context: Tensor) -> Tensor:
    """The block's text cross-attention, with its optional norm, as a residual update."""
    normed = block.norm2(hidden_states.float()).type_as(hidden_states)
    return block.attn2(normed, context, None, None)


def feed_forward_norm(block: nn.Module, hidden_states: Tensor) -> Tensor:
    """The block's norm before the feed-forward (float32, no affine)."""
    return block.norm3(hidden_states.float())


def feed_forward(block: nn.Module, hidden_states: Tensor) -> Tensor:
    """The block's feed-forward."""
    return block.ffn(hidden_states)


def output_head(model: nn.Module, hidden_states: Tensor, temb: Tensor) -> Tensor:
    """Output norm with per-frame shift/scale from temb (B, F, D), then projection: (B, L, p*C)."""
    frames = temb.shape[1]
    shift, scale = (model.scale_shift_table.unsqueeze(0) + temb.unsqueeze(2)).unsqueeze(2).unbind(3)  # (B, F, 1, D)
    x = model.norm_out(hidden_states.float()).unflatten(1, (frames, -1)) * (1 + scale) + shift
    return model.proj_out(x.flatten(1, 2).type_as(hidden_states))


def timestep_modulation(condition_embedder: nn.Module, t: Tensor) -> Tensor:
    """A Wan condition embedder's timestep part alone: t (B,) in [0, 1] -> modulation (B, 6, D), float32."""
    temb = condition_embedder.time_embedder(condition_embedder.timesteps_proj(t * TIMESTEP_SCALE).to(condition_embedder.time_proj.weight.dtype))
    return condition_embedder.time_proj(condition_embedder.act_fn(temb)).unflatten(1, (6, -1)).float()


def strip_text_embedding(condition_embedder: nn.Module) -> nn.Module:
    """Remove a (copied) condition embedder's text and image parts: a timestep embedder."""
    condition_embedder.text_embedder = None
    condition_embedder.image_embedder = None
    return condition_embedder


def fastest_attention_backend() -> str:
    """The fastest exact attention diffusers can run here: FlashAttention-3 on Hopper, FlashAttention-2, else ``native`` (PyTorch's SDPA, which picks its own fused kernel on a GPU)."""
    from diffusers.models import attention_dispatch

    if torch.cuda.is_available():
        major, _ = torch.cuda.get_device_capability()
        if major == 9 and attention_dispatch._CAN_USE_FLASH_ATTN_3:
            return "_flash_3"
        if attention_dispatch._CAN_USE_FLASH_ATTN:
            return "flash"
    return "native"


def set_attention_backend(model: nn.Module, backend: str) -> str:
    """Run the model's attention processors (and those made after, through diffusers' active backend) on ``backend`` (``auto``: :func:`fastest_attention_backend`); returns its name."""
    name = fastest_attention_backend() if backend == "auto" else backend
    model.set_attention_backend(name)
    return name


def patch_size(model: nn.Module) -> tuple[int, int, int]:
    """The transformer's (pt, ph, pw)."""
    return tuple(model.config.patch_size)


def new_transformer(kind: str = "wan", **config) -> nn.Module:
    """A randomly initialised WanTransformer3DModel (``kind="wan"``) or WanAnimateTransformer3DModel (``"animate"``) from keyword config."""
    from diffusers import WanAnimateTransformer3DModel, WanTransformer3DModel

    classes = {"wan": WanTransformer3DModel, "animate": WanAnimateTransformer3DModel}
    if kind not in classes:
        raise ValueError(f"backbone.transformer.kind={kind!r}: use one of {', '.join(classes)}")
    config = {k: tuple(v) if isinstance(v, list) and k == "patch_size" else v for k, v in config.items()}
    if kind == "animate" and config.get("num_layers", 40) % config.get("inject_face_latents_blocks", 5):
        raise ValueError(f"an Animate transformer needs num_layers ({config.get('num_layers')}) to be a multiple of "
                         f"inject_face_latents_blocks ({config.get('inject_face_latents_blocks', 5)}): one face adapter per group of blocks")
    return classes[kind](**config)


def new_vae(**config) -> nn.Module:
    """A randomly initialised AutoencoderKLWan from keyword config (diffusers' defaults: the Wan2.1 VAE and its latent statistics)."""
    from diffusers import AutoencoderKLWan

    return AutoencoderKLWan(**config)


def set_in_channels(transformer: nn.Module, patch_embedding: nn.Conv3d) -> None:
    """Install a widened patch embedding and record its input channels in the config."""
    transformer.patch_embedding = patch_embedding
    transformer.register_to_config(in_channels=patch_embedding.in_channels)


def vae_posterior_logvar_bias(vae: nn.Module) -> Tensor:
    """The bias of the VAE's log-variance channels (``quant_conv`` yields mean and logvar on channels)."""
    return vae.quant_conv.bias[vae.config.z_dim :]


def vae_residual_outputs(vae: nn.Module) -> list[nn.Module]:
    """The last layer of every residual branch and attention block of a Wan VAE."""
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanAttentionBlock, WanResidualBlock

    return [m.conv2 if isinstance(m, WanResidualBlock) else m.proj for m in vae.modules() if isinstance(m, (WanResidualBlock, WanAttentionBlock))]


def vae_decode_unclamped(vae: nn.Module, latents: Tensor) -> Tensor:
    """``AutoencoderKLWan.decode`` of raw latents without its final clamp, frame by frame with the causal cache."""
    vae.clear_cache()
    hidden_states = vae.post_quant_conv(latents)  # (B, z, F, h, w)
    frames = []
    for index in range(hidden_states.shape[2]):
        vae._conv_idx = [0]
        frames.append(vae.decoder(hidden_states[:, :, index : index + 1], feat_cache=vae._feat_map, feat_idx=vae._conv_idx, first_chunk=index == 0))
    vae.clear_cache()
    return torch.cat(frames, dim=2)


def vae_encoder_parameters(vae: nn.Module) -> int:
    """Parameters of the VAE's encoder side (encoder and quant_conv)."""
    return sum(p.numel() for p in vae.encoder.parameters()) + sum(p.numel() for p in vae.quant_conv.parameters())
