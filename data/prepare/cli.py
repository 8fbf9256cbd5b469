"""``python -m data.prepare videos=DIR out=SHARDS [key=value ...]``: prepare shards (settings in conf/prepare.yaml)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from common.cli import run, to_dataclass
from data.prepare.config import REPORT_NAME, PrepareConfig
from data.prepare.writer import prepare


def prepare_command(cfg: DictConfig) -> dict:
    """Prepare the shards ``cfg`` describes, print a line per split and the skip counts; returns the report."""
    config = to_dataclass(PrepareConfig, cfg)
    report = prepare(config)
    for split, counts in report["samples_per_split"].items():
        print(f"{split}: {counts['video']} clips, {counts['images']} images")
    skips = ", ".join(f"{reason} {entry['count']}" for reason, entry in sorted(report["skipped"].items()))
    print(f"skipped: {report['skipped_total']}" + (f" ({skips})" if skips else "") + f"; details in {Path(config.out) / REPORT_NAME}")
    return report


def main(argv: list[str] | None = None) -> dict:
    """Command-line entry point (``argv``: the ``key=value`` overrides; default: the process's arguments)."""
    return run(prepare_command, "prepare", argv, errors=(ValueError, ImportError))
