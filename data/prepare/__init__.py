"""Real media -> training shards: ``python -m data.prepare videos=DIR out=SHARDS [key=value ...]``.

Sources: a folder of videos (``.mp4 .webm .mov .mkv .avi .m4v``, searched recursively) and folders
of frames (a directory holding images directly, read in natural order at ``frame_fps``), and/or
an image-pair dataset (``images=DIR pairs=FILE``, DeepFashion-style pose transfer). Each video is
decoded with PyAV, resampled to ``fps`` by timestamp (nearest frame, so variable frame rates come
out right), resized to short side ``size`` (sides rounded to even numbers for H.264), cut into
clips of ``clip_frames`` every ``clip_stride`` frames, given whole-body keypoints (``pose=sidecar``:
the user's file beside the video, see :mod:`data.pose_import`; ``pose=dwpose``: the ONNX models
in ``dwpose_dir``, see :mod:`common.pose.dwpose`) and text boxes (``text=sidecar``: ``STEM.text.json``;
``text=ocr``: an installed OCR detector), and written as shards in the documented format
(docs/ARCHITECTURE.md) with ``manifest.json`` (which also counts the samples per bucket
``"HxWxT"`` of each split and subset under ``buckets``), so ``python -m experiments.fit data=prepared
data.root=SHARDS`` trains on it. The region-weight masks (head, hands, text) are computed from
the stored keypoints and text boxes when batches are built (:mod:`data.masks`).

Splits: ``train/``, ``val/``, ``test/`` top-level folders when the source folder has them
(``split=auto`` or ``folders``), else by a hash of the identity (the source file, or its folder
with ``identity=folder``) with ``val_fraction``/``test_fraction``; val (and test, when asked for)
always gets at least one identity when there are enough.

Bad input never crashes the run and never becomes a wrong sample: each problem skips the source
(or clip, or pair) with a reason, and ``OUT/prepare_report.json`` lists the counts per reason and
the offending paths. Resumable: shards are written under a temporary name and renamed when
complete; ``OUT/prepare_state.json`` records the clips inside finished shards, and a re-run skips
them (and sources already finished) and appends new shards. Changing a setting that changes the
output needs ``overwrite=true``. Settings and their defaults: conf/prepare.yaml.

Modules, in the order the work flows: :mod:`~data.prepare.config` (settings, skip reasons),
:mod:`~data.prepare.sources` (finding sources, identities, splits), :mod:`~data.prepare.decode`
(decoding, resampling, resizing), :mod:`~data.prepare.models` (pose model, OCR detector),
:mod:`~data.prepare.annotate` (keypoints, text boxes), :mod:`~data.prepare.clips` (one source ->
encoded samples, in a worker), :mod:`~data.prepare.state` (resumable state, manifest, report),
:mod:`~data.prepare.writer` (the run), :mod:`~data.prepare.cli` (the command line).
"""

from data.prepare.cli import main
from data.prepare.config import GENERATOR_NAME, GENERATOR_VERSION, REASONS, REPORT_NAME, STATE_NAME, PrepareConfig, SkipSource
from data.prepare.models import Models
from data.prepare.state import PrepareState, Report
from data.prepare.writer import prepare

__all__ = [
    "GENERATOR_NAME", "GENERATOR_VERSION", "REASONS", "REPORT_NAME", "STATE_NAME", "Models", "PrepareConfig", "PrepareState", "Report",
    "SkipSource", "main", "prepare",
]
