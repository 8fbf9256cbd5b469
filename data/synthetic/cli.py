"""``python -m data.synthetic out=DIR [key=value ...]``: generate (or reuse) the puppet dataset (conf/synthetic.yaml)."""

from __future__ import annotations

from dataclasses import dataclass, fields

from omegaconf import DictConfig, OmegaConf

from common.cli import run, to_dataclass
from data.synthetic.config import SyntheticConfig
from data.synthetic.writer import SUBSET_PREFIXES, ensure_dataset, generate_dataset


@dataclass
class Command:
    """The command's own settings; the other keys of conf/synthetic.yaml are :class:`SyntheticConfig`'s."""

    out: str  # dataset directory
    workers: int  # render processes (the output does not depend on them)
    force: bool  # regenerate even when the manifest matches


def generate(cfg: DictConfig) -> dict:
    """Generate (or reuse) the dataset ``cfg`` describes and print a line per split; returns the manifest."""
    command = to_dataclass(Command, OmegaConf.masked_copy(cfg, [item.name for item in fields(Command)]))
    config = to_dataclass(SyntheticConfig, OmegaConf.masked_copy(cfg, [item.name for item in fields(SyntheticConfig)]))
    build = generate_dataset if command.force else ensure_dataset
    manifest = build(command.out, config, workers=command.workers)
    for split, info in manifest["splits"].items():
        counts = ", ".join(f"{subset} {info[subset]['samples']} in {len(info[subset]['shards'])} shards" for subset in SUBSET_PREFIXES)
        print(f"{split}: {len(info['identities'])} identities; {counts}")
    return manifest


def main(argv: list[str] | None = None) -> dict:
    """Command-line entry point (``argv``: the ``key=value`` overrides; default: the process's arguments)."""
    return run(generate, "synthetic", argv, errors=(ValueError,))
