"""The dataset on disk: jobs in output order, rendered by worker processes, written as shards plus the manifest."""

from __future__ import annotations

import itertools
import multiprocessing
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm import tqdm

from data.shards import ShardWriter, bucket_of, encode_sample, read_manifest, write_manifest
from data.synthetic.config import GENERATOR_NAME, GENERATOR_VERSION, SPLITS, SyntheticConfig
from data.synthetic.identity import identity_name, identity_split
from data.synthetic.scene import make_clip, make_image_pair

SUBSET_PREFIXES = {"video": "shard", "images": "images", "long": "long"}
DEFAULT_CONFIG = SyntheticConfig()  # the training configs' puppets (conf/data/synthetic.yaml)


@dataclass(frozen=True)
class _Job:
    """One unit of generation work, of its own identity: a clip, an image pair or a long clip."""

    split: str
    subset: str
    index: int


def _counts(config: SyntheticConfig, split: str) -> dict[str, int]:
    """Jobs of each subset of a split."""
    return {"video": config.clips(split), "images": config.pairs(split), "long": config.long_clips}


def _jobs(config: SyntheticConfig) -> list[_Job]:
    """All jobs in output order: split, then subset, then index."""
    return [_Job(split, subset, i) for split in SPLITS for subset, count in _counts(config, split).items() for i in range(count)]


def _run_job(config: SyntheticConfig, job: _Job) -> list[dict]:
    """Render and encode one job -> webdataset dicts ready for a ShardWriter."""
    if job.subset == "images":
        samples = make_image_pair(config, job.split, job.index)
    else:
        samples = (make_clip(config, job.split, job.index, job.subset),)
    return [encode_sample(sample) for sample in samples]


def _run_job_star(arguments: tuple[SyntheticConfig, _Job]) -> list[dict]:
    """``_run_job`` for ``Pool.imap``."""
    return _run_job(*arguments)


def _results(config: SyntheticConfig, jobs: list[_Job], workers: int) -> Iterator[list[dict]]:
    """Encoded samples of ``jobs`` in order, rendered by ``workers`` processes."""
    if workers <= 1:
        yield from (_run_job(config, job) for job in jobs)
        return
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        yield from pool.imap(_run_job_star, [(config, job) for job in jobs], chunksize=1)


def _remove_old_shards(out: Path) -> None:
    """Delete shards (and temporary files) this generator wrote before, nothing else."""
    for split in SPLITS:
        for prefix in SUBSET_PREFIXES.values():
            for path in (out / split).glob(f"{prefix}-[0-9]*.tar"):
                path.unlink()
            for path in (out / split).glob(f".{prefix}-[0-9]*.tar.tmp"):
                path.unlink()


def generate_dataset(out: str | Path, config: SyntheticConfig = DEFAULT_CONFIG, workers: int = 1, progress: bool = True) -> dict:
    """Render the whole dataset into ``out`` and write its manifest; returns the manifest."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest.json").unlink(missing_ok=True)
    _remove_old_shards(out)
    jobs = _jobs(config)
    splits = {
        split: {"identities": [identity_name(config.seed, split, subset, i) for subset, count in _counts(config, split).items() for i in range(count)],
                **{subset: {"shards": [], "samples": 0} for subset in SUBSET_PREFIXES},
                "buckets": {subset: {} for subset in SUBSET_PREFIXES}}
        for split in SPLITS
    }
    results = zip(jobs, _results(config, jobs, workers))
    with tqdm(total=len(jobs), desc=f"puppets -> {out}", unit="job", disable=not progress) as bar:
        for (split, subset), group in itertools.groupby(results, key=lambda item: (item[0].split, item[0].subset)):
            with ShardWriter(out / split, prefix=SUBSET_PREFIXES[subset], max_samples=config.samples_per_shard) as writer:
                for _, encoded in group:
                    buckets = splits[split]["buckets"][subset]
                    for raw in encoded:
                        writer.write_encoded(raw)
                        buckets[bucket_of(raw)] = buckets.get(bucket_of(raw), 0) + 1
                    splits[split][subset]["samples"] += len(encoded)
                    bar.update()
            splits[split][subset]["shards"] = [str(path.relative_to(out)) for path in writer.paths]
    manifest = {"generator": GENERATOR_NAME, "version": GENERATOR_VERSION, "seed": config.seed, "config": asdict(config),
                "identity_split": identity_split(), "splits": splits}
    write_manifest(out, manifest)
    return manifest


def _manifest_matches(out: Path, manifest: dict, config: SyntheticConfig) -> bool:
    """Whether an existing manifest was made by this generator version with ``config``, counts buckets, and its shards exist."""
    if manifest.get("generator") != GENERATOR_NAME or manifest.get("version") != GENERATOR_VERSION or manifest.get("config") != asdict(config):
        return False
    if not all("buckets" in split for split in manifest["splits"].values()):
        return False  # written before manifests counted buckets (the image groups need them): same pixels, rewritten
    shards = [path for split in manifest["splits"].values() for subset in SUBSET_PREFIXES for path in split[subset]["shards"]]
    return all((out / path).is_file() for path in shards)


def ensure_dataset(out: str | Path, config: SyntheticConfig = DEFAULT_CONFIG, workers: int = 1, progress: bool = True) -> dict:
    """Reuse ``out`` when its manifest matches ``config`` (same generator version and parameters), else regenerate."""
    out = Path(out)
    try:
        manifest = read_manifest(out)
    except (FileNotFoundError, ValueError):
        manifest = None
    if manifest is not None and _manifest_matches(out, manifest, config):
        return manifest
    return generate_dataset(out, config, workers=workers, progress=progress)
