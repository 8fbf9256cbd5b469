"""The run: find the sources, hand the pending ones to worker processes, write their samples into shards, keep the state."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

from tqdm import tqdm

from data.prepare.clips import Result, run_job
from data.prepare.config import PrepareConfig
from data.prepare.models import Models
from data.prepare.sources import Job, pair_jobs, video_jobs
from data.prepare.state import FinishedShard, PrepareState, RunSummary, ShardEntry, load_state, remove_partial, save
from data.processes import worker_context
from data.shards import ShardWriter, bucket_of

SUBSET_OF_KIND = {"video": "video", "pair": "images"}
PREFIX_OF_SUBSET = {"video": "shard", "images": "images"}


class ShardWriters:
    """Open shard writers per (split, subset), each remembering what its unfinished shard holds."""

    def __init__(self, out: Path, run: int, samples_per_shard: int):
        self.out, self.run, self.samples_per_shard = out, run, samples_per_shard
        self.writers: dict[tuple[str, str], ShardWriter] = {}
        self.pending: dict[tuple[str, str], list[ShardEntry]] = defaultdict(list)

    def write(self, split: str, subset: str, entry: ShardEntry, raw: dict) -> FinishedShard | None:
        """Write one sample; returns the shard it finished, if it did."""
        slot = (split, subset)
        if slot not in self.writers:
            prefix = f"{PREFIX_OF_SUBSET[subset]}-r{self.run:03d}"
            self.writers[slot] = ShardWriter(self.out / split, prefix=prefix, max_samples=self.samples_per_shard)
        writer = self.writers[slot]
        before = len(writer.paths)
        writer.write_encoded(raw)
        self.pending[slot].append(entry)
        return self._finished(slot) if len(writer.paths) > before else None

    def close(self) -> list[FinishedShard]:
        """Finish every open shard."""
        finished = []
        for slot, writer in self.writers.items():
            before = len(writer.paths)
            writer.close()
            if len(writer.paths) > before:
                finished.append(self._finished(slot))
        return finished

    def abort(self) -> None:
        """Delete the unfinished shards (on an error)."""
        for writer in self.writers.values():
            writer._abort()  # noqa: SLF001 - ShardWriter's own cleanup

    def _finished(self, slot: tuple[str, str]) -> FinishedShard:
        """The shard of ``slot`` just renamed into place, with the entries written since the previous one."""
        entries, self.pending[slot] = self.pending[slot], []
        return FinishedShard(*slot, str(self.writers[slot].paths[-1].relative_to(self.out)), entries)


_worker_context: tuple[PrepareConfig, dict[str, str], Models] | None = None  # a worker process's (config, roots, models)


def _start_worker(config: PrepareConfig, roots: dict[str, str], models: Models) -> None:
    """Pool initializer: keep what every job of this worker process needs (its models load on first use)."""
    global _worker_context
    _worker_context = (config, roots, models)


def _run_in_worker(job: Job) -> Result:
    """Process one job in a worker process."""
    return run_job(job, *_worker_context)


def results(jobs: list[Job], config: PrepareConfig, roots: dict[str, str], models: Models) -> Iterator[Result]:
    """Results of ``jobs`` in order, from ``config.workers`` processes started by ``config.multiprocessing_context`` (``roots``: the folder of each job kind)."""
    if config.workers <= 1:
        yield from (run_job(job, config, roots, models) for job in jobs)
        return
    with worker_context(config.multiprocessing_context).Pool(config.workers, initializer=_start_worker, initargs=(config, roots, models)) as pool:
        yield from pool.imap(_run_in_worker, jobs, chunksize=1)


def find_jobs(config: PrepareConfig, state: PrepareState) -> tuple[list[Job], dict[str, str]]:
    """Every job of the configured folders (identities and bad pair lines recorded in ``state``) and the folder of each job kind."""
    roots, jobs = {}, []
    for kind, folder in (("video", config.videos), ("pair", config.images)):
        if folder is None:
            continue
        root = Path(folder)
        if not root.is_dir():
            raise FileNotFoundError(f"{'videos' if kind == 'video' else 'images'}={root}: no such directory")
        roots[kind] = str(root)
        if kind == "video":
            jobs += video_jobs(config, root, state.identities)
        else:
            pairs, bad_lines = pair_jobs(config, root, state.identities)
            jobs += pairs
            for where, reason, detail in bad_lines:
                state.add_bad_line(where, reason, detail)
    for job in jobs:
        state.identities[job.identity] = job.split
    return jobs, roots


def prepare(config: PrepareConfig, on_sample: Callable[[str], None] | None = None, models: Models | None = None) -> dict:
    """Prepare (or continue preparing) ``config.out``; returns the report.

    ``on_sample(key)`` runs after each written sample; ``models``: the pose model and OCR detector
    to use (default: those the settings name, loaded on first use).
    """
    config.check()
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    state = load_state(out, config)
    removed = remove_partial(out)
    models = models or Models(config)
    models.check()
    state.runs += 1
    jobs, roots = find_jobs(config, state)
    todo = state.pending(jobs, config.retry_skipped)
    run = RunSummary(run=state.runs, workers=config.workers, pose=config.pose, removed_partial_shards=removed)
    writers = ShardWriters(out, state.runs, config.samples_per_shard)

    def finish(shard: FinishedShard) -> None:
        """Record a finished shard and save the state, manifest and report."""
        state.add_shard(shard)
        save(out, state, run)

    started = time.perf_counter()
    try:
        with tqdm(total=len(todo), desc=f"prepare -> {out}", unit="source", disable=not config.progress) as bar:
            for result in results(todo, config, roots, models):
                job = result.job
                state.start_source(result)
                for key, raw in result.samples:
                    shard = writers.write(job.split, SUBSET_OF_KIND[job.kind], ShardEntry(key, job.source, bucket_of(raw)), raw)
                    run.samples_written += 1
                    if shard is not None:
                        finish(shard)
                    if on_sample is not None:
                        on_sample(key)
                state.finish_source(job.source)
                run.sources_processed += 1
                bar.update()
            for shard in writers.close():
                finish(shard)
    except BaseException:
        writers.abort()
        save(out, state, run)
        raise
    return save(out, state, run.finished(time.perf_counter() - started))
