"""What a run leaves for the next one and for people: the resumable state, the manifest and the report, all written atomically.

``OUT/prepare_state.json`` (:class:`PrepareState`) records every source seen, the keys of its
samples, which of them sit in finished shards, and the counts the manifest needs; a re-run skips
what it records as done. ``OUT/prepare_report.json`` (:class:`Report`) is derived from it.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from common.files import atomic_write_json
from data.prepare.clips import Result
from data.prepare.config import GENERATOR_NAME, GENERATOR_VERSION, REASONS, REPORT_NAME, SPLITS, STATE_NAME, PrepareConfig
from data.prepare.sources import Job
from data.shards import write_manifest

SUBSETS = ("video", "images")
IN_PROGRESS = "interrupted or in progress"


def per_subset(make: Callable[[], Any]) -> dict[str, dict[str, Any]]:
    """``{split: {subset: make()}}`` for every split and subset."""
    return {split: {subset: make() for subset in SUBSETS} for split in SPLITS}


@dataclass
class SourceState:
    """One source (video, frame folder, image pair or bad line of a pairs file) as the runs so far left it."""

    kind: str  # "video" or "pair"
    split: str
    identity: str
    clips: list[str] = field(default_factory=list)  # keys of its samples, written or not
    skipped: list[list[str]] = field(default_factory=list)  # [where, reason, detail] of each skip
    expected_done: bool = False  # every sample of it went to the shard writers
    complete: bool = False  # ... and every one of them sits in a finished shard


@dataclass
class ShardEntry:
    """A sample inside a shard: its key, the source it came from and its bucket ``"HxWxT"``."""

    key: str
    source: str
    bucket: str


@dataclass
class FinishedShard:
    """A shard renamed into place: where it is (relative to OUT) and what it holds."""

    split: str
    subset: str
    path: str
    entries: list[ShardEntry]


@dataclass
class RunSummary:
    """``last_run`` of the report: what this run did so far (``status`` is "finished" at the end)."""

    run: int
    workers: int
    pose: str
    removed_partial_shards: int
    status: str = IN_PROGRESS
    sources_processed: int = 0
    samples_written: int = 0
    seconds: float = 0.0
    samples_per_second: float | None = None
    samples_per_second_per_worker: float | None = None

    def finished(self, seconds: float) -> RunSummary:
        """This summary at the end of the run, with its throughput."""
        rate = self.samples_written / seconds if seconds > 0 else None
        return replace(self, status="finished", seconds=round(seconds, 3), samples_per_second=None if rate is None else round(rate, 3),
                       samples_per_second_per_worker=None if rate is None else round(rate / self.workers, 3))


@dataclass
class SkipSummary:
    """Everything skipped for one reason: how often, what the reason means, where and why exactly."""

    description: str
    count: int = 0
    paths: list[str] = field(default_factory=list)
    details: list[str] = field(default_factory=list)


@dataclass
class Report:
    """``prepare_report.json``: totals, skips per reason with the offending paths, adjustments, the last run."""

    sources: int
    video_clips: int
    image_samples: int
    samples_per_split: dict[str, dict[str, int]]
    skipped: dict[str, SkipSummary]
    skipped_total: int
    adjusted: dict[str, dict[str, Any]]  # reason -> {"count", "paths"}
    last_run: RunSummary


@dataclass
class PrepareState:
    """``prepare_state.json``: the settings, every source seen and every finished shard, per split and subset."""

    settings: dict[str, Any]
    generator: str = GENERATOR_NAME
    version: int = GENERATOR_VERSION
    runs: int = 0
    identities: dict[str, str] = field(default_factory=dict)  # identity -> split (kept across runs)
    sources: dict[str, SourceState] = field(default_factory=dict)
    clips: dict[str, str] = field(default_factory=dict)  # key -> the finished shard holding it
    shards: dict[str, dict[str, list[str]]] = field(default_factory=lambda: per_subset(list))
    samples: dict[str, dict[str, int]] = field(default_factory=lambda: per_subset(int))
    buckets: dict[str, dict[str, dict[str, int]]] = field(default_factory=lambda: per_subset(dict))  # "HxWxT" -> samples
    adjusted: dict[str, list[str]] = field(default_factory=dict)  # reason -> sources

    @classmethod
    def read(cls, path: Path) -> PrepareState:
        """The state in ``path``; a ValueError saying how to start over when it is not a state file of this version."""
        try:
            data = json.loads(path.read_text())
            if data.get("generator") != GENERATOR_NAME or data.get("version") != GENERATOR_VERSION:
                written_by = f"{data.get('generator')} version {data.get('version')}"
                raise ValueError(f"written by {written_by}, this is {GENERATOR_NAME} version {GENERATOR_VERSION}")
            sources = {name: SourceState(**info) for name, info in data["sources"].items()}
            return cls(**{**data, "sources": sources})
        except (ValueError, TypeError, KeyError, AttributeError) as exn:
            raise ValueError(f"{path} is not a usable data.prepare state file ({exn}): add overwrite=true to start over, or use another out=") from exn

    def pending(self, jobs: list[Job], retry_skipped: bool) -> list[Job]:
        """The jobs still to do, each knowing its keys already in finished shards (``retry_skipped``: redo sources with skips)."""
        todo = []
        for job in jobs:
            info = self.sources.get(job.source)
            if info and info.complete and not (retry_skipped and info.skipped):
                continue
            done = frozenset(key for key in (info.clips if info else []) if key in self.clips)
            todo.append(replace(job, done=done))
        return todo

    def add_bad_line(self, where: str, reason: str, detail: str) -> None:
        """Record a line of a pairs file that names no pair."""
        self.sources[where] = SourceState("pair", "train", "", skipped=[[where, reason, detail]], expected_done=True, complete=True)

    def start_source(self, result: Result) -> None:
        """Record a worker's result before its samples go to the writers: skips, adjustments, sample keys."""
        job = result.job
        info = self.sources.setdefault(job.source, SourceState(job.kind, job.split, job.identity))
        info.skipped = [list(skip) for skip in result.skipped]
        info.expected_done = info.complete = False
        for reason, where in result.adjusted:
            if where not in self.adjusted.setdefault(reason, []):
                self.adjusted[reason].append(where)
        info.clips = sorted(set(info.clips) | {key for key, _ in result.samples})

    def finish_source(self, source: str) -> None:
        """Record that every sample of ``source`` went to the writers."""
        self.sources[source].expected_done = True
        self._update_complete(source)

    def add_shard(self, shard: FinishedShard) -> None:
        """Record a finished shard: its path, its samples and their buckets; mark the sources it completes."""
        self.shards[shard.split][shard.subset].append(shard.path)
        self.samples[shard.split][shard.subset] += len(shard.entries)
        buckets = self.buckets[shard.split][shard.subset]
        for entry in shard.entries:
            self.clips[entry.key] = shard.path
            buckets[entry.bucket] = buckets.get(entry.bucket, 0) + 1
        for source in {entry.source for entry in shard.entries}:
            self._update_complete(source)

    def _update_complete(self, source: str) -> None:
        """A source is complete once all its samples went to the writers and sit in finished shards."""
        info = self.sources[source]
        info.complete = info.expected_done and all(key in self.clips for key in info.clips)

    def manifest(self) -> dict:
        """The dataset manifest (the layout data.synthetic writes) of the finished shards."""
        identities = defaultdict(set)
        for info in self.sources.values():
            if info.clips:
                identities[info.split].add(info.identity)
        splits = {split: {"identities": sorted(identities[split]),
                          **{subset: {"shards": list(self.shards[split][subset]), "samples": self.samples[split][subset]} for subset in SUBSETS},
                          "buckets": self.buckets[split]}
                  for split in SPLITS}
        return {"generator": GENERATOR_NAME, "version": GENERATOR_VERSION, "config": self.settings, "splits": splits}

    def report(self, run: RunSummary) -> Report:
        """The report of the state after ``run``."""
        skipped: dict[str, SkipSummary] = {}
        for _, info in sorted(self.sources.items()):
            for where, reason, detail in info.skipped:
                entry = skipped.setdefault(reason, SkipSummary(REASONS[reason]))
                entry.count += 1
                entry.paths.append(where)
                entry.details.append(detail)
        return Report(
            sources=len(self.sources),
            video_clips=sum(self.samples[split]["video"] for split in SPLITS),
            image_samples=sum(self.samples[split]["images"] for split in SPLITS),
            samples_per_split=self.samples,
            skipped=skipped,
            skipped_total=sum(entry.count for entry in skipped.values()),
            adjusted={reason: {"count": len(paths), "paths": paths} for reason, paths in sorted(self.adjusted.items())},
            last_run=run,
        )


def load_state(out: Path, config: PrepareConfig) -> PrepareState:
    """The state of an earlier run (same settings), or a fresh one; ``overwrite`` deletes earlier output first."""
    if config.overwrite:
        remove_output(out)
    path = out / STATE_NAME
    if not path.is_file():
        return PrepareState(settings=config.settings())
    state = PrepareState.read(path)
    if state.settings != config.settings():
        changed = sorted(key for key in set(config.settings()) | set(state.settings) if config.settings().get(key) != state.settings.get(key))
        raise ValueError(f"{out} was prepared with other settings ({', '.join(changed)} differ): add overwrite=true to start over, or use another out=")
    return state


def save(out: Path, state: PrepareState, run: RunSummary) -> dict:
    """Write state, manifest and report atomically; returns the report as written."""
    atomic_write_json(out / STATE_NAME, asdict(state), indent=1)
    write_manifest(out, state.manifest())
    report = asdict(state.report(run))
    atomic_write_json(out / REPORT_NAME, report, indent=1)
    return report


def remove_output(out: Path) -> None:
    """Delete shards, temporary files, state, manifest and report that data.prepare wrote in ``out``."""
    for split in SPLITS:
        for pattern in ("shard-r*.tar", "images-r*.tar", ".shard-r*.tar.tmp", ".images-r*.tar.tmp"):
            for path in (out / split).glob(pattern):
                path.unlink()
    for name in (STATE_NAME, REPORT_NAME, "manifest.json"):
        (out / name).unlink(missing_ok=True)


def remove_partial(out: Path) -> int:
    """Delete shards an interrupted run left half-written (temporary names); returns how many."""
    removed = 0
    for split in SPLITS:
        for path in list((out / split).glob(".shard-r*.tar.tmp")) + list((out / split).glob(".images-r*.tar.tmp")):
            path.unlink()
            removed += 1
    return removed
