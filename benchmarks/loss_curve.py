"""A run's loss curve as a Markdown table, from its CSV log (``logger=csv``): the docs' training curves.

Each row is one window of ``--every`` steps: the mean training loss over the window, the learning
rate at its end, and the validation loss and metrics logged in it.

    python -m benchmarks.loss_curve runs/base/DATE_TIME --every 250
"""

from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path

VAL_COLUMNS = ("val/loss", "val/psnr", "val/psnr_mask", "val/silhouette_iou")


def read_log(run: Path) -> list[dict[str, str]]:
    """The rows of ``run``'s CSV log: ``csv/metrics.csv``, after the parts a resumed run kept (``metrics.N.csv``).

    Each launch's rows stop where the next launch's begin (a resume redoes the steps since its checkpoint).
    """
    logs = sorted(run.glob("csv/**/metrics*.csv"), key=lambda p: p.stat().st_mtime)
    if not logs:
        raise SystemExit(f"error: {run}: no csv/metrics.csv (train with logger=csv)")
    folder = logs[-1].parent  # the newest version's
    parts = sorted(folder.glob("metrics.[0-9]*.csv"), key=lambda p: int(p.suffixes[0][1:]))
    launches = []
    for path in [*parts, *[p for p in [folder / "metrics.csv"] if p.is_file()]]:
        with open(path, newline="") as file:
            launches.append(list(csv.DictReader(file)))
    rows, next_start = [], float("inf")
    for launch in reversed(launches):  # each launch up to the step where a later one starts
        rows[:0] = [row for row in launch if int(row["step"]) < next_start]
        next_start = min([next_start, *(int(row["step"]) for row in launch)])
    return rows


def curve(rows: list[dict[str, str]], every: int) -> list[dict[str, float]]:
    """One dict per window: step, train/loss (mean), lr and validation columns where logged in it."""
    windows: dict[int, dict[str, list[float]]] = {}
    for row in rows:
        window = windows.setdefault(int(row["step"]) // every, {})
        for key, value in row.items():
            if value not in ("", None) and key != "step":
                window.setdefault(key, []).append(float(value))
    table = []
    for index in sorted(windows):
        values = windows[index]
        entry = {"step": (index + 1) * every}
        entry["train/loss"] = sum(values.get("train/loss", [math.nan])) / max(1, len(values.get("train/loss", [])))
        lr = next((k for k in values if k.startswith("lr-")), None)
        if lr:
            entry["lr"] = values[lr][-1]
        entry.update({key: values[key][-1] for key in VAL_COLUMNS if key in values})
        table.append(entry)
    return table


def markdown(table: list[dict[str, float]]) -> str:
    """The curve as a Markdown table."""
    columns = ["step", "train/loss", "lr", *[c for c in VAL_COLUMNS if any(c in row for row in table)]]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in table:
        cells = [str(row["step"])] + [f"{row[c]:.3g}" if c in row else "" for c in columns[1:]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.loss_curve", description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a run directory trained with logger=csv")
    parser.add_argument("--every", type=int, default=250, help="steps per row")
    args = parser.parse_args(argv)
    text = markdown(curve(read_log(args.run), args.every))
    print(text)
    return text


if __name__ == "__main__":
    main()
