"""Throughput of ``data.prepare`` without the pose model (sidecar keypoints): clips per second, per worker.

Writes ``--videos`` synthetic puppet videos (``--frames`` frames at 12 fps, short side ``--size``)
with exact ``.pose.npy`` sidecars into a scratch folder, then times ``data.prepare`` on them
(decode, resample to ``--fps``, resize to ``--out-size``, cut ``--clip-frames`` clips, encode,
write shards) for each worker count. Prints one line per worker count and writes the numbers
as JSON (``--json``).

    python -m benchmarks.prepare_throughput --videos 8 --frames 66 --size 256 --workers 1 2
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from common.video import encode_video
from data.prepare import PrepareConfig, prepare
from data.synthetic import SyntheticConfig, make_clip


def make_videos(directory: Path, count: int, frames: int, size: int) -> None:
    """``count`` puppet videos with keypoint sidecars."""
    config = SyntheticConfig(size=size, frames=frames, fps=12.0)
    directory.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        sample = make_clip(config, "train", index)
        (directory / f"video{index:03d}.mp4").write_bytes(encode_video(sample.frames, 12.0))
        np.save(directory / f"video{index:03d}.pose.npy", sample.keypoints)


def measure(videos: Path, out: Path, workers: int, args: argparse.Namespace) -> dict:
    """One timed ``prepare`` run (from scratch) -> its numbers."""
    config = PrepareConfig(out=str(out), videos=str(videos), fps=args.fps, size=args.out_size, clip_frames=args.clip_frames,
                           workers=workers, val_fraction=0.0, test_fraction=0.0, overwrite=True, progress=False)
    started = time.perf_counter()
    report = prepare(config)
    seconds = time.perf_counter() - started
    clips = report["video_clips"]
    return {"workers": workers, "clips": clips, "seconds": round(seconds, 2), "clips_per_second": round(clips / seconds, 3),
            "clips_per_second_per_worker": round(clips / seconds / workers, 3)}


def main() -> None:
    """Parse flags, make the videos, time each worker count."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=int, default=8)
    parser.add_argument("--frames", type=int, default=66, help="frames per source video (12 fps)")
    parser.add_argument("--size", type=int, default=256, help="short side of the source videos")
    parser.add_argument("--fps", type=float, default=None, help="target fps (default: keep 12)")
    parser.add_argument("--out-size", type=int, default=None, help="short side of the stored clips (default: keep)")
    parser.add_argument("--clip-frames", type=int, default=33)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="prepare_bench_"))
    try:
        started = time.perf_counter()
        make_videos(scratch / "videos", args.videos, args.frames, args.size)
        print(f"made {args.videos} videos of {args.frames} frames (short side {args.size}) in {time.perf_counter() - started:.1f} s")
        results = [measure(scratch / "videos", scratch / f"out{w}", w, args) for w in args.workers]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    for row in results:
        print(f"workers {row['workers']}: {row['clips']} clips in {row['seconds']} s = {row['clips_per_second']} clips/s "
              f"({row['clips_per_second_per_worker']} per worker)")
    if args.json:
        args.json.write_text(json.dumps({"settings": vars(args) | {"json": str(args.json)}, "results": results}, indent=2))


if __name__ == "__main__":
    main()
