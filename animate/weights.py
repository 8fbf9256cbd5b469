"""Load Wan transformer and VAE weights from local files, never from the Hub.

Two layouts are understood, told apart by the keys stored in the files:

* diffusers: a directory with ``config.json`` + ``diffusion_pytorch_model*.safetensors``
  (sharded with an ``*.index.json``), keys like ``blocks.0.attn1.to_q.weight``;
* original Wan (what Wan-AI publish): ``diffusion_pytorch_model*.safetensors`` with keys like
  ``blocks.0.self_attn.q.weight`` and ``Wan2.1_VAE.pth`` with keys like
  ``decoder.middle.0.residual.0.gamma``. These carry no diffusers config, so ``config=`` names a
  local directory (or file) holding one; the keys are converted by diffusers' own single-file
  conversion. Wan2.2-Animate's motion encoder is named here at any depth (diffusers' converter
  knows the released 512 px one only), so a tiny Animate transformer round-trips too.

``to_original_layout`` is the inverse of that conversion, checked against it key for key, so
a model exported here loads back through diffusers bit for bit.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import diffusers
import torch
from diffusers import AutoencoderKLWan, WanAnimateTransformer3DModel, WanTransformer3DModel
from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers, convert_wan_vae_to_diffusers
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

StateDict = dict[str, torch.Tensor]
Shapes = dict[str, tuple[int, ...]]

CONFIG_NAME = "config.json"
SAFETENSORS_SUFFIX = ".safetensors"
TORCH_SUFFIXES = (".pth", ".pt")
INDEX_NAME = "diffusion_pytorch_model.safetensors.index.json"
PREFIX_ORIGINAL = "model.diffusion_model."  # ComfyUI-style prefix diffusers' conversion strips


@dataclass(frozen=True)
class _Family:
    """What differs between loading a transformer and a VAE."""

    model_cls: type
    what: str
    original_keys: tuple[str, ...]  # keys only the original layout has (any suffices)
    diffusers_keys: tuple[str, ...]  # keys only the diffusers layout has (any suffices)
    weight_globs: tuple[str, ...]  # weight files (or a shard index) looked for in a directory, first match wins
    config_hint: str
    to_diffusers: Callable[[StateDict], StateDict]


TRANSFORMER = _Family(
    model_cls=WanTransformer3DModel,
    what="Wan transformer",
    original_keys=("head.head.weight", "blocks.0.self_attn.q.weight"),
    diffusers_keys=("proj_out.weight", "blocks.0.attn1.to_q.weight"),
    weight_globs=(INDEX_NAME, "diffusion_pytorch_model*.safetensors"),
    config_hint="the transformer/ folder of a Wan-AI *-Diffusers repository",
    to_diffusers=lambda state_dict: convert_wan_transformer_to_diffusers(dict(state_dict)),
)
ANIMATE = replace(  # the transformer's layouts, plus a motion encoder of any depth (see _animate_to_diffusers)
    TRANSFORMER,
    model_cls=WanAnimateTransformer3DModel,
    what="Wan2.2-Animate transformer",
    config_hint="the transformer/ folder of Wan-AI/Wan2.2-Animate-14B-Diffusers",
    to_diffusers=lambda state_dict: _animate_to_diffusers(state_dict),
)
VAE = _Family(
    model_cls=AutoencoderKLWan,
    what="Wan VAE",
    original_keys=("decoder.middle.0.residual.0.gamma", "encoder.conv1.weight"),
    diffusers_keys=("decoder.mid_block.resnets.0.norm1.gamma", "encoder.conv_in.weight"),
    weight_globs=("Wan2.1_VAE.pth", INDEX_NAME, "diffusion_pytorch_model*.safetensors"),
    config_hint="the vae/ folder of a Wan-AI *-Diffusers repository",
    to_diffusers=lambda state_dict: convert_wan_vae_to_diffusers(dict(state_dict)),
)


def load_transformer(
    path: str | Path, config: str | Path | None = None, torch_dtype: torch.dtype | None = None
) -> WanTransformer3DModel:
    """Load a Wan transformer (or Wan2.2-Animate's, by the config's class) from a local diffusers directory or original-layout file/directory."""
    return _load(_transformer_family(Path(path), config), Path(path), config, torch_dtype)


def _transformer_family(path: Path, config: str | Path | None) -> _Family:
    """ANIMATE when the config in use (``config``, else the one beside the weights) declares WanAnimateTransformer3DModel."""
    file = Path(config) / CONFIG_NAME if config is not None and Path(config).is_dir() else Path(config) if config is not None else path / CONFIG_NAME
    if file.is_file() and _config_class(file) == WanAnimateTransformer3DModel.__name__:
        return ANIMATE
    return TRANSFORMER


def load_vae(
    path: str | Path, config: str | Path | None = None, torch_dtype: torch.dtype | None = None
) -> AutoencoderKLWan:
    """Load a Wan VAE from a local diffusers directory or an original ``Wan2.1_VAE.pth``."""
    return _load(VAE, Path(path), config, torch_dtype)


def to_original_layout(model: nn.Module) -> StateDict:
    """The model's state dict under original Wan keys (exact inverse of diffusers' conversion)."""
    family = _family_of(model)
    state_dict = model.state_dict()
    if family is ANIMATE:
        original = _animate_to_original(model, state_dict)
    elif family is TRANSFORMER:
        original = {_transformer_key_to_original(key): value for key, value in state_dict.items()}
    else:
        up_index = _vae_up_block_index(model)
        original = {_vae_key_to_original(key, up_index): value for key, value in state_dict.items()}
    _check_round_trip(family, model, state_dict, original)
    return original


def save_original_layout(model: nn.Module, path: str | Path) -> Path:
    """Write the model in original Wan layout: ``.safetensors`` or ``.pth`` by the path's suffix."""
    path = Path(path)
    state_dict = {key: value.detach().cpu().contiguous() for key, value in to_original_layout(model).items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == SAFETENSORS_SUFFIX:
        save_file(state_dict, path)
    elif path.suffix in TORCH_SUFFIXES:
        torch.save(state_dict, path)
    else:
        raise ValueError(f"{path}: unknown weight file suffix {path.suffix!r}; use {SAFETENSORS_SUFFIX} or .pth")
    return path


def save_diffusers(model: nn.Module, directory: str | Path) -> Path:
    """Write the model in diffusers layout (config.json + safetensors) into ``directory``."""
    _family_of(model)
    model.save_pretrained(directory, safe_serialization=True)
    return Path(directory)


def _load(family: _Family, path: Path, config: str | Path | None, torch_dtype: torch.dtype | None) -> nn.Module:
    """Detect the layout of the weights at ``path`` and build the model from them."""
    files = _weight_files(family, path)
    shapes = _stored_shapes(files)
    layout = _layout(family, shapes, path)
    config_file = _config_file(family, path, config, layout)
    if layout == "diffusers" and config is None:
        _check_shapes(family, shapes, config_file, path)
        model = family.model_cls.from_pretrained(path, local_files_only=True, torch_dtype=torch_dtype)
    else:
        state_dict = _read_state_dict(files)
        if layout == "original":
            state_dict = family.to_diffusers(state_dict)
        _check_shapes(family, {key: tuple(value.shape) for key, value in state_dict.items()}, config_file, path)
        model = family.model_cls.from_single_file(
            state_dict, config=str(config_file), local_files_only=True, torch_dtype=torch_dtype
        )
    return _into_owned_memory(model)


def _into_owned_memory(model: nn.Module) -> nn.Module:
    """Copy weights out of the file mapping safetensors leaves them in.

    The model then survives its file being overwritten, and its outputs do not depend on where
    the tensors happened to sit in the file (CPU kernels round differently on misaligned memory).
    """
    with torch.no_grad():
        for tensor in itertools.chain(model.parameters(), model.buffers()):
            tensor.data = tensor.data.clone()
    return model


def _weight_files(family: _Family, path: Path) -> list[Path]:
    """The weight files at ``path``: the file itself, or in a directory the first pattern that matches."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such file or directory (expected {family.what} weights)")
    for pattern in family.weight_globs:
        files = sorted(path.glob(pattern))
        if files:
            return _indexed_files(files[0]) if pattern == INDEX_NAME else files
    raise FileNotFoundError(f"{path}: no {family.what} weights in this directory (looked for {', '.join(family.weight_globs)})")


def _indexed_files(index: Path) -> list[Path]:
    """The shard files an ``*.index.json`` names, checked to exist."""
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise ValueError(f"{index}: not a safetensors index (expected a JSON object with 'weight_map'): {error}") from error
    files = [index.parent / name for name in sorted(set(weight_map.values()))]
    missing = [file.name for file in files if not file.is_file()]
    if missing:
        raise FileNotFoundError(f"{index}: names shards that are not in {index.parent}: {', '.join(missing)}")
    return files


def _stored_shapes(files: list[Path]) -> Shapes:
    """Key -> shape of every tensor in ``files``, reading only headers where the format allows."""
    shapes: Shapes = {}
    for file in files:
        if file.suffix == SAFETENSORS_SUFFIX:
            try:
                with safe_open(file, framework="pt") as handle:
                    file_shapes = {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
            except Exception as error:  # safetensors raises its own SafetensorError for bad headers
                raise ValueError(f"{file}: cannot read safetensors header: {error}") from error
        else:
            file_shapes = {key: tuple(value.shape) for key, value in _read_torch_file(file).items()}
        _merge_without_duplicates(shapes, file_shapes, file)
    return shapes


def _read_state_dict(files: list[Path]) -> StateDict:
    """All tensors in ``files`` (safetensors or torch ``.pth`` loaded with weights_only=True)."""
    state_dict: StateDict = {}
    for file in files:
        tensors = load_file(file) if file.suffix == SAFETENSORS_SUFFIX else _read_torch_file(file)
        _merge_without_duplicates(state_dict, tensors, file)
    return state_dict


def _read_torch_file(file: Path) -> StateDict:
    """A torch-saved state dict, without unpickling arbitrary objects."""
    if file.suffix not in TORCH_SUFFIXES:
        raise ValueError(f"{file}: unknown weight file suffix {file.suffix!r} (expected {SAFETENSORS_SUFFIX} or .pth)")
    try:
        loaded = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for truncated or non-torch files
        raise ValueError(f"{file}: cannot read torch weights: {error}") from error
    if not isinstance(loaded, dict) or not all(isinstance(value, torch.Tensor) for value in loaded.values()):
        raise ValueError(f"{file}: expected a state dict (name -> tensor), got {type(loaded).__name__}")
    return loaded


def _merge_without_duplicates(into: dict, new: dict, file: Path) -> None:
    """Add ``new`` to ``into``; a key stored twice across shards is an error."""
    duplicates = into.keys() & new.keys()
    if duplicates:
        raise ValueError(f"{file}: keys already stored in another shard: {', '.join(sorted(duplicates)[:3])}")
    into.update(new)


def _layout(family: _Family, keys: Shapes | StateDict, path: Path) -> str:
    """'original' or 'diffusers', from the stored key names."""
    names = {key.removeprefix(PREFIX_ORIGINAL) for key in keys}
    if any(key in names for key in family.original_keys):
        return "original"
    if any(key in names for key in family.diffusers_keys):
        return "diffusers"
    found = ", ".join(sorted(keys)[:3]) or "no tensors"
    raise ValueError(
        f"{path}: not {family.what} weights: expected original Wan keys like {family.original_keys[0]} "
        f"or diffusers keys like {family.diffusers_keys[0]}, found {found}"
    )


def _config_file(family: _Family, path: Path, config: str | Path | None, layout: str) -> Path:
    """The diffusers config.json to build the model from: ``config`` or the one beside the weights."""
    if config is not None:
        config = Path(config)
        file = config / CONFIG_NAME if config.is_dir() else config
        if not file.is_file():
            raise FileNotFoundError(f"no {CONFIG_NAME} in {config}: {_config_advice(family)}")
        _check_config_class(family, file)
        return file
    file = path / CONFIG_NAME
    if path.is_dir() and file.is_file() and _config_class(file) == family.model_cls.__name__:
        return file
    where = f"no diffusers {CONFIG_NAME} in {path}" if path.is_dir() else f"{path} is a single file"
    raise ValueError(f"{path}: {layout}-layout {family.what} weights need a diffusers config, but {where}: {_config_advice(family)}")


def _config_advice(family: _Family) -> str:
    """What to pass as ``config=``."""
    return (
        f"pass config=DIR_WITH_DIFFUSERS_CONFIG, a local folder holding the diffusers {family.model_cls.__name__} "
        f"{CONFIG_NAME} (e.g. {family.config_hint})"
    )


def _config_class(file: Path) -> str | None:
    """The ``_class_name`` a config file declares (None if it is not a JSON object)."""
    try:
        content = json.loads(file.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{file}: not valid JSON: {error}") from error
    return content.get("_class_name") if isinstance(content, dict) else None


def _check_config_class(family: _Family, file: Path) -> None:
    """Raise unless ``file`` is a diffusers config of the family's model class."""
    declared = _config_class(file)
    if declared != family.model_cls.__name__:
        raise ValueError(
            f"{file}: not a diffusers {family.model_cls.__name__} config (_class_name is {declared!r}); "
            f"{_config_advice(family)}"
        )


def _expected_shapes(family: _Family, config_file: Path) -> Shapes:
    """Key -> shape of the model the config describes, built on the meta device (no memory)."""
    with torch.device("meta"):
        model = family.model_cls.from_config(family.model_cls.load_config(str(config_file)))
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


def _check_shapes(family: _Family, found: Shapes, config_file: Path, path: Path) -> None:
    """Raise one error listing missing, unexpected and mis-shaped keys against the config."""
    expected = _expected_shapes(family, config_file)
    ignored = family.model_cls._keys_to_ignore_on_load_unexpected or []
    missing = sorted(expected.keys() - found.keys())
    unexpected = sorted(key for key in found.keys() - expected.keys() if not any(re.search(p, key) for p in ignored))
    mismatched = sorted(key for key in expected.keys() & found.keys() if expected[key] != found[key])
    if not (missing or unexpected or mismatched):
        return
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
    if mismatched:
        shown = ", ".join(f"{key} {found[key]} vs {expected[key]}" for key in mismatched[:3])
        problems.append(f"{len(mismatched)} with another shape than the config gives (e.g. {shown})")
    raise ValueError(f"{path}: weights do not match the {family.model_cls.__name__} of {config_file}: {'; '.join(problems)}")


def _family_of(model: nn.Module) -> _Family:
    """The family a model instance belongs to."""
    for family in (TRANSFORMER, ANIMATE, VAE):
        if isinstance(model, family.model_cls):
            return family
    raise TypeError(f"expected a WanTransformer3DModel, WanAnimateTransformer3DModel or AutoencoderKLWan, got {type(model).__name__}")


# diffusers -> original Wan transformer keys, applied in order (inverse of diffusers' rename table)
_TRANSFORMER_RENAMES = tuple(
    (re.compile(pattern), replacement)
    for pattern, replacement in (
        (r"^condition_embedder\.time_embedder\.linear_1\.", "time_embedding.0."),
        (r"^condition_embedder\.time_embedder\.linear_2\.", "time_embedding.2."),
        (r"^condition_embedder\.time_proj\.", "time_projection.1."),
        (r"^condition_embedder\.text_embedder\.linear_1\.", "text_embedding.0."),
        (r"^condition_embedder\.text_embedder\.linear_2\.", "text_embedding.2."),
        (r"^condition_embedder\.image_embedder\.norm1\.", "img_emb.proj.0."),
        (r"^condition_embedder\.image_embedder\.ff\.net\.0\.proj\.", "img_emb.proj.1."),
        (r"^condition_embedder\.image_embedder\.ff\.net\.2\.", "img_emb.proj.3."),
        (r"^condition_embedder\.image_embedder\.norm2\.", "img_emb.proj.4."),
        (r"^scale_shift_table$", "head.modulation"),
        (r"^proj_out\.", "head.head."),
        (r"\.scale_shift_table$", ".modulation"),
        (r"\.attn1\.", ".self_attn."),
        (r"\.attn2\.", ".cross_attn."),
        (r"\.to_q\.", ".q."),
        (r"\.to_k\.", ".k."),
        (r"\.to_v\.", ".v."),
        (r"\.to_out\.0\.", ".o."),
        (r"\.add_k_proj\.", ".k_img."),
        (r"\.add_v_proj\.", ".v_img."),
        (r"\.norm_added_k\.", ".norm_k_img."),
        (r"\.ffn\.net\.0\.proj\.", ".ffn.0."),
        (r"\.ffn\.net\.2\.", ".ffn.2."),
        (r"^(blocks\.\d+)\.norm2\.", r"\1.norm3."),  # diffusers norm2 is the cross-attention norm
    )
)

_RESNET_PARTS = {"norm1": "residual.0", "conv1": "residual.2", "norm2": "residual.3", "conv2": "residual.6", "conv_shortcut": "shortcut"}
_VAE_ENDS = {"conv_in": "conv1", "norm_out": "head.0", "conv_out": "head.2"}
_VAE_QUANT = {"quant_conv": "conv1", "post_quant_conv": "conv2"}
_MIDDLE_SLOTS = {"resnets": (0, 2), "attentions": (1,)}


def kept_in_float32(model: nn.Module, name: str) -> bool:
    """Whether the weight or module ``name`` belongs to a module the model class keeps in float32 (norms, time embedding)."""
    return bool(set(getattr(model, "_keep_in_fp32_modules", None) or ()).intersection(name.split(".")))


def _transformer_key_to_original(key: str) -> str:
    """One diffusers transformer key under its original Wan name."""
    for pattern, replacement in _TRANSFORMER_RENAMES:
        key = pattern.sub(replacement, key)
    return key


def _vae_up_block_index(vae: AutoencoderKLWan) -> dict[tuple[int, str, int], int]:
    """(up block, 'resnets'/'upsamplers', i) -> index in the original decoder's flat ``upsamples``."""
    index, flat = {}, 0
    for block_number, block in enumerate(vae.decoder.up_blocks):
        for kind in ("resnets", "upsamplers"):
            for i in range(len(getattr(block, kind, None) or ())):
                index[(block_number, kind, i)] = flat
                flat += 1
    return index


def _vae_key_to_original(key: str, up_index: dict[tuple[int, str, int], int]) -> str:
    """One diffusers VAE key under its original Wan name."""
    first, rest = key.split(".", 1)
    if first in _VAE_QUANT:
        return f"{_VAE_QUANT[first]}.{rest}"
    module, rest = rest.split(".", 1)
    if module in _VAE_ENDS:
        return f"{first}.{_VAE_ENDS[module]}.{rest}"
    if module == "mid_block":
        kind, i, rest = rest.split(".", 2)
        return f"{first}.middle.{_MIDDLE_SLOTS[kind][int(i)]}.{_resnet_part(rest)}"
    if module == "down_blocks":
        i, rest = rest.split(".", 1)
        return f"{first}.downsamples.{i}.{_resnet_part(rest)}"
    if module == "up_blocks":
        block_number, kind, i, rest = rest.split(".", 3)
        return f"{first}.upsamples.{up_index[(int(block_number), kind, int(i))]}.{_resnet_part(rest)}"
    raise ValueError(f"VAE key {key!r} has no original Wan name (a Wan2.2 residual VAE is not supported)")


def _resnet_part(rest: str) -> str:
    """Rename a residual block's submodule (norm1 -> residual.0, ...); other modules keep their name."""
    name, tail = rest.split(".", 1)
    return f"{_RESNET_PARTS.get(name, name)}.{tail}"


def _check_round_trip(family: _Family, model: nn.Module, state_dict: StateDict, original: StateDict) -> None:
    """Raise unless the family's conversion maps ``original`` back to exactly ``state_dict``."""
    back = family.to_diffusers(original)
    lost = sorted(state_dict.keys() - back.keys())
    if lost or len(back) != len(state_dict) or any(not torch.equal(back[key], state_dict[key]) for key in state_dict):
        raise ValueError(
            f"this {type(model).__name__} has no original Wan layout that diffusers {diffusers.__version__} can read "
            f"back (e.g. {', '.join(lost[:3]) or 'keys collide'}); original Wan checkpoints have the Wan2.1 "
            "structure (VAE: 4 levels, num_res_blocks=2, channels growing as in dim_mult [1, 2, 4, 4])"
        )


# ----- Wan2.2-Animate's own modules ----------------------------------------------------------------------------------
# diffusers' converter names the motion encoder of the released 512 px model only (7 residual blocks, its output conv
# at index 8); these tables name it at any depth (log2(motion_encoder_size) - 2 blocks), so a tiny Animate round-trips.
MOTION_ENCODER = "motion_encoder."
_MOTION_CONVS = "enc.net_app.convs."
_FACE_ENCODER_CONVS = ("conv1_local", "conv2", "conv3")  # original: NAME.conv.*
_FACE_ADAPTER_RENAMES = {"to_q": "linear1_q", "to_out": "linear2", "norm_q": "q_norm", "norm_k": "k_norm"}


def _motion_encoder_names(depth: int) -> dict[str, str]:
    """Diffusers -> original names of the motion encoder's parameters and blur kernels, ``depth`` residual blocks."""
    names = {
        "conv_in.weight": f"{_MOTION_CONVS}0.0.weight",
        "conv_in.act_fn.bias": f"{_MOTION_CONVS}0.1.bias",
        "conv_out.weight": f"{_MOTION_CONVS}{depth + 1}.weight",
        "motion_synthesis_weight": "dec.direction.weight",
    }
    for i in range(depth):
        block, conv = f"res_blocks.{i}.", f"{_MOTION_CONVS}{i + 1}."
        names |= {
            f"{block}conv1.weight": f"{conv}conv1.0.weight",
            f"{block}conv1.act_fn.bias": f"{conv}conv1.1.bias",
            f"{block}conv2.blur_kernel": f"{conv}conv2.0.kernel",
            f"{block}conv2.weight": f"{conv}conv2.1.weight",
            f"{block}conv2.act_fn.bias": f"{conv}conv2.2.bias",
            f"{block}conv_skip.blur_kernel": f"{conv}skip.0.kernel",
            f"{block}conv_skip.weight": f"{conv}skip.1.weight",
        }
    return {MOTION_ENCODER + key: MOTION_ENCODER + value for key, value in names.items()}


def _animate_to_diffusers(state_dict: StateDict) -> StateDict:
    """Original Wan2.2-Animate keys -> diffusers' (any motion-encoder depth; the blur kernels, constants, dropped)."""
    state_dict = {key.removeprefix(PREFIX_ORIGINAL): value for key, value in state_dict.items()}
    depth = sum(1 for key in state_dict if re.fullmatch(rf"{MOTION_ENCODER}{re.escape(_MOTION_CONVS)}\d+\.conv1\.0\.weight", key))
    names = {original: name for name, original in _motion_encoder_names(depth).items()}
    motion, rest = {}, {}
    for key, value in state_dict.items():
        if key.endswith(".kernel") and key.startswith(MOTION_ENCODER):
            continue  # the model builds its blur kernels from its config
        if key in names:
            motion[names[key]] = value.flatten() if key.endswith(".bias") else value  # biases stored as (1, C, 1, 1)
        elif key.startswith(f"{MOTION_ENCODER}enc.fc."):
            motion[f"{MOTION_ENCODER}motion_network.{key.removeprefix(f'{MOTION_ENCODER}enc.fc.')}"] = value
        else:
            rest[key] = value
    return convert_wan_transformer_to_diffusers(rest) | motion


def _animate_to_original(model: WanAnimateTransformer3DModel, state_dict: StateDict) -> StateDict:
    """The inverse of :func:`_animate_to_diffusers`, with the blur kernels written as the original checkpoints hold them."""
    names = _motion_encoder_names(len(model.motion_encoder.res_blocks))
    original: StateDict = {}
    for key, value in state_dict.items():
        module, _, rest = key.partition(".")
        if key in names:
            original[names[key]] = value.reshape(1, -1, 1, 1) if key.endswith(".bias") else value
        elif key.startswith(f"{MOTION_ENCODER}motion_network."):
            original[f"{MOTION_ENCODER}enc.fc.{key.removeprefix(f'{MOTION_ENCODER}motion_network.')}"] = value
        elif module == "face_encoder" and rest.split(".")[0] in _FACE_ENCODER_CONVS:
            name, _, tail = rest.partition(".")
            original[f"face_encoder.{name}.conv.{tail}"] = value
        elif module == "face_adapter":
            index, name, tail = rest.split(".", 2)
            if name == "to_k":  # to_k and to_v are one linear1_kv, keys first
                original[f"face_adapter.fuser_blocks.{index}.linear1_kv.{tail}"] = torch.cat([value, state_dict[f"face_adapter.{index}.to_v.{tail}"]])
            elif name != "to_v":
                original[f"face_adapter.fuser_blocks.{index}.{_FACE_ADAPTER_RENAMES[name]}.{tail}"] = value
        else:
            original[_transformer_key_to_original(key)] = value
    buffers = dict(model.named_buffers())
    original |= {names[key]: buffers[key] for key in names if key.endswith("blur_kernel")}
    return original


# ----- One-to-All's released checkpoints (ssj9596/One-to-All-Animation) --------------------------------------------
# Official key prefix -> this framework's (docs/ONE_TO_ALL.md), ``{i}`` a block index. The first
# matching pair wins, in either direction; an official key that matches none is the backbone's.
ONE_TO_ALL_KEY_MAP: tuple[tuple[str, str], ...] = (
    ("blocks.{i}.attn1.add_k_proj.", "backbone.transformer.blocks.{i}.attn1.processor.to_k_ref."),
    ("blocks.{i}.attn1.add_v_proj.", "backbone.transformer.blocks.{i}.attn1.processor.to_v_ref."),
    ("blocks.{i}.attn1.norm_added_k.", "backbone.transformer.blocks.{i}.attn1.processor.norm_k_ref."),
    ("refextractor.blocks.{i}.", "reference_extractor.blocks.{i}.block."),
    ("refextractor.ref_blocks.{i}.", "reference_extractor.projections.{i}."),
    ("refextractor.", "reference_extractor."),
    ("image_to_cond.", "reference_prefix_encoder."),
    ("input_hint_block.", "pose_control.encoder."),
    ("controlnet.blocks.{i}.", "pose_control.blocks.{i}.block."),
    ("controlnet_zero.{i}.", "pose_control.zero.{i}."),
    ("", "backbone.transformer."),
)


def _rewrite(key: str, pairs: list[tuple[str, str]]) -> str | None:
    """``key`` with the first matching ``(from, to)`` prefix pair applied (``{i}`` an index); None when none matches."""
    for source, target in pairs:
        match = re.match(re.escape(source).replace(r"\{i\}", r"(\d+)"), key)
        if match:
            return target.replace("{i}", match.group(1) if match.groups() else "") + key[match.end() :]
    return None


def one_to_all_key(key: str) -> str:
    """An official One-to-All checkpoint key -> the key in :class:`animate.methods.onetoall.OneToAll`'s state dict."""
    return _rewrite(key, list(ONE_TO_ALL_KEY_MAP))


def official_one_to_all_key(key: str) -> str | None:
    """The inverse: a OneToAll state-dict key -> the official key (None for weights the official model lacks, e.g. the VAE)."""
    return _rewrite(key, [(ours, official) for official, ours in ONE_TO_ALL_KEY_MAP])


def read_one_to_all_checkpoint(path: str | Path) -> StateDict:
    """The tensors of an official One-to-All checkpoint: a folder of safetensors shards (or one file), keys mapped to OneToAll's."""
    path = Path(path).expanduser()
    files = sorted(path.glob(f"*{SAFETENSORS_SUFFIX}")) if path.is_dir() else [path]
    if not files or not all(f.is_file() for f in files):
        raise FileNotFoundError(f"method.official_checkpoint={path}: no {SAFETENSORS_SUFFIX} files (expected the released One-to-All folder)")
    return {one_to_all_key(key): tensor for key, tensor in _read_state_dict(files).items()}


def load_one_to_all_checkpoint(system: nn.Module, path: str | Path) -> int:
    """Load an official checkpoint into a OneToAll built in the official form; every weight must match. Returns the count loaded."""
    state = read_one_to_all_checkpoint(path)
    own = {name: p for name, p in system.state_dict().items() if official_one_to_all_key(name) is not None}
    missing, unexpected = sorted(own.keys() - state.keys()), sorted(state.keys() - own.keys())
    if missing or unexpected:
        hint = ("build OneToAll in the official form: method.extractor_timestep=true reference_prefix=encoded prefix_time=noisy "
                "pose_control.style=controlnet and the backbone and block counts of the checkpoint")
        raise ValueError(f"{path}: {len(missing)} weights missing (e.g. {[official_one_to_all_key(k) for k in missing[:3]]}), "
                         f"{len(unexpected)} unknown (e.g. {unexpected[:3]}): {hint}")
    mismatched = [k for k in state if state[k].shape != own[k].shape]
    if mismatched:
        k = mismatched[0]
        raise ValueError(f"{path}: {len(mismatched)} weights differ in shape (e.g. {official_one_to_all_key(k)}: {tuple(state[k].shape)} stored, {tuple(own[k].shape)} here)")
    system.load_state_dict(state, strict=False)
    return len(state)
