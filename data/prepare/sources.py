"""Finding the input: videos and frame folders under a root, pairs in a pairs file, each with its identity and split."""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from data.prepare.config import SPLITS, PrepareConfig

VIDEO_SUFFIXES = (".mp4", ".webm", ".mov", ".mkv", ".avi", ".m4v")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@dataclass
class Job:
    """One unit of work: a video / frame folder (``kind="video"``) or an image pair (``kind="pair"``)."""

    kind: str
    source: str  # the report's name for it: path relative to its root (pairs: "a|b")
    split: str
    identity: str
    paths: tuple[str, ...]  # absolute media paths (pairs: two images)
    done: frozenset = frozenset()  # keys already in finished shards


def is_frame_folder(path: Path) -> bool:
    """Whether a directory holds image files directly (a video as frames)."""
    return path.is_dir() and any(child.suffix.lower() in IMAGE_SUFFIXES for child in path.iterdir() if child.is_file())


def find_videos(root: Path) -> list[Path]:
    """Video files and frame folders under ``root``, sorted; frame folders are not searched further."""
    found = []
    for directory, subdirs, files in os.walk(root):
        directory = Path(directory)
        subdirs.sort()
        keep = []
        for name in subdirs:
            (found if is_frame_folder(directory / name) else keep).append(directory / name)
        subdirs[:] = [path.name for path in keep]
        found += [directory / name for name in files if Path(name).suffix.lower() in VIDEO_SUFFIXES]
    return sorted(found)


def slug(text: str, limit: int = 48) -> str:
    """A key-safe ``[A-Za-z0-9_-]`` version of ``text`` with a short hash of the original appended."""
    safe = re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-")[-limit:] or "x"
    return f"{safe}-{hashlib.sha1(text.encode()).hexdigest()[:8]}"


def identity_of(relative: Path, rule: str) -> str:
    """Identity of a source: its path without suffix (``file``) or its folder (``folder``)."""
    if rule == "folder" and relative.parent != Path("."):
        return relative.parent.as_posix()
    return relative.with_suffix("").as_posix() if relative.suffix else relative.as_posix()


def _hash01(text: str) -> float:
    """A stable number in [0, 1) from ``text``."""
    return int(hashlib.sha1(text.encode()).hexdigest()[:12], 16) / 16**12


def assign_splits(identities: list[str], config: PrepareConfig, known: dict[str, str]) -> dict[str, str]:
    """Identity -> split by hash (earlier runs' choices kept); val/test get one identity when empty and there are enough."""
    splits = dict(known)
    new = sorted(set(identities) - set(known), key=_hash01)
    for identity in new:
        h = _hash01(identity)
        splits[identity] = "val" if h < config.val_fraction else "test" if h < config.val_fraction + config.test_fraction else "train"
    for split, fraction, minimum in (("val", config.val_fraction, 2), ("test", config.test_fraction, 3)):
        if fraction > 0 and len(set(identities)) >= minimum and split not in {splits[i] for i in identities}:
            movable = [i for i in new if splits[i] == "train"]
            if len(movable) > 1 or (movable and any(splits[i] == "train" for i in identities if i not in movable)):
                splits[movable[0]] = split
    return splits


def _folder_split(relative: Path) -> str | None:
    """The split named by the first folder of ``relative`` (train/val/test), if any."""
    first = relative.parts[0] if len(relative.parts) > 1 else None
    return first if first in SPLITS else None


def video_jobs(config: PrepareConfig, root: Path, known: dict[str, str]) -> list[Job]:
    """Jobs of all videos under ``root`` with their identity and split."""
    sources = find_videos(root)
    relatives = [source.relative_to(root) for source in sources]
    by_folder = config.split == "folders" or (config.split == "auto" and any(_folder_split(r) for r in relatives))
    identities = [identity_of(r, config.identity) for r in relatives]
    if by_folder:
        splits = {identity: _folder_split(r) or "train" for identity, r in zip(identities, relatives)}
    else:
        splits = assign_splits(identities, config, known)
    return [Job("video", r.as_posix(), splits[i], i, (str(s),)) for s, r, i in zip(sources, relatives, identities)]


def read_pairs(path: Path) -> list[tuple[str, str] | str]:
    """Pairs file -> (from, to) names; a line that cannot be parsed becomes its text (reported as bad_pair)."""
    lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    pairs: list[tuple[str, str] | str] = []
    header = [part.strip().lower() for part in re.split(r"[,\s]+", lines[0])] if lines else []
    start = 1 if {"from", "to"} <= set(header) else 0
    columns = (header.index("from"), header.index("to")) if start else (0, 1)
    for line in lines[start:]:
        parts = [part.strip() for part in re.split(r",|\s+", line) if part.strip()]
        pairs.append((parts[columns[0]], parts[columns[1]]) if len(parts) > max(columns) else line)
    return pairs


def pair_jobs(config: PrepareConfig, root: Path, known: dict[str, str]) -> tuple[list[Job], list[tuple[str, str, str]]]:
    """Jobs of the pairs list and the lines that could not be parsed (as skips)."""
    pairs_path = Path(config.pairs) if Path(config.pairs).is_absolute() else root / config.pairs
    if not pairs_path.is_file():
        raise FileNotFoundError(f"pairs file {pairs_path} does not exist")
    parsed = read_pairs(pairs_path)
    good = [pair for pair in parsed if isinstance(pair, tuple)]
    bad = [(f"{pairs_path}: {line}", "bad_pair", "expected two image names") for line in parsed if isinstance(line, str)]
    identities = [identity_of(Path(a), config.identity) for a, _ in good]
    splits = {i: config.pairs_split for i in identities} if config.pairs_split else assign_splits(identities, config, known)
    jobs = [Job("pair", f"{a}|{b}", splits[i], i, (str(root / a), str(root / b))) for (a, b), i in zip(good, identities)]
    return jobs, bad
