"""data.prepare: real media -> shards; keypoint import; bad input; resuming; training on the result."""

import io
import json
import os
import pickle
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from common.cli import compose_config
from common.pose.layout import Body, to_dwpose134, to_openpose18
from common.video import encode_video
from data.pose_import import KeypointError, load_keypoints, read_deepfashion_annotations
from data.prepare import REPORT_NAME, STATE_NAME, Models, PrepareConfig, main, prepare
from data.shards import iter_shard_samples, read_manifest
from data.synthetic import SyntheticConfig, make_clip, make_image_pair

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
SYNTH = SyntheticConfig(size=64, frames=9, fps=12.0)


def write_clip(directory: Path, name: str, identity: int, frames: int = 9):
    """A synthetic puppet clip (clip ``identity``, of its own identity) as NAME.mp4 with its exact keypoints as NAME.pose.npy; returns the sample."""
    sample = make_clip(SyntheticConfig(size=64, frames=frames, fps=12.0), "train", identity)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.mp4").write_bytes(encode_video(sample.frames, 12.0))
    np.save(directory / f"{name}.pose.npy", sample.keypoints)
    return sample


def config(tmp_path: Path, videos: Path, **overrides) -> PrepareConfig:
    """A quiet PrepareConfig writing to tmp_path/out."""
    values = dict(out=str(tmp_path / "out"), videos=str(videos), clip_frames=9, val_fraction=0.0, test_fraction=0.0, progress=False)
    return PrepareConfig(**{**values, **overrides})


def read_samples(out: Path, subset: str = "video") -> dict:
    """All samples of all splits by key."""
    manifest = read_manifest(out)
    paths = [out / p for split in manifest["splits"].values() for p in split[subset]["shards"]]
    return {sample.key: sample for sample in iter_shard_samples(paths)}


def write_vfr(path: Path, times: list[float], size: int = 64) -> None:
    """A variable-frame-rate mp4 whose frame i has grey level 20 i and a puppet-free picture."""
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=24)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        for index, t in enumerate(times):
            frame = av.VideoFrame.from_ndarray(np.full((size, size, 3), 20 * index, np.uint8), format="rgb24")
            frame.pts, frame.time_base = int(round(t * 1000)), Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    path.write_bytes(buffer.getvalue())


def index_keypoints(count: int, size: int = 64) -> np.ndarray:
    """Keypoints (T, 133, 3) whose nose x is the frame index (a body that is visible everywhere)."""
    keypoints = np.zeros((count, 133, 3), np.float32)
    keypoints[:, :17] = [size / 2, size / 2, 1.0]
    keypoints[:, Body.NOSE, 0] = np.arange(count)
    return keypoints


# ----------------------------------------------------------------------------- round trips


def test_sidecar_keypoints_round_trip_exactly(tmp_path):
    videos = tmp_path / "videos"
    truth = {f"dancer{i}": write_clip(videos / f"group{i % 2}", f"dancer{i}", identity=i) for i in range(3)}
    (videos / "group0" / "dancer0.text.json").write_text(json.dumps([[0, 2, 3, 20, 12], [4, 1, 1, 9, 9]]))
    report = prepare(config(tmp_path, videos))
    assert report["video_clips"] == 3 and report["skipped_total"] == 0
    samples = read_samples(tmp_path / "out")
    assert len(samples) == 3
    for sample in samples.values():
        name = Path(sample.meta["source"]).stem
        np.testing.assert_array_equal(sample.keypoints, truth[name].keypoints)  # exact, not approximately
        assert sample.meta["fps"] == 12.0 and sample.meta["identity"] == sample.meta["source"].rsplit(".", 1)[0]
        assert np.abs(sample.frames.astype(int) - truth[name].frames).mean() < 4  # the video survived re-encoding
        if name == "dancer0":
            assert sample.meta["text_boxes"] == [[0, 2.0, 3.0, 20.0, 12.0], [4, 1.0, 1.0, 9.0, 9.0]]


def test_resample_resize_and_clip_cutting(tmp_path):
    videos = tmp_path / "videos"
    truth = write_clip(videos, "long", identity=0, frames=24)
    prepare(config(tmp_path, videos, fps=6.0, size=32, clip_frames=5, clip_stride=4))
    samples = sorted(read_samples(tmp_path / "out").values(), key=lambda s: s.meta["source_start"])
    assert [s.meta["source_start"] for s in samples] == [0, 8]  # 12 frames at 6 fps -> clips at 0 and 4 (source 0, 8)
    height, width = truth.frames.shape[1:3]
    scale_x, scale_y = samples[0].meta["width"] / width, samples[0].meta["height"] / height
    assert min(samples[0].meta["width"], samples[0].meta["height"]) == 32 and samples[0].meta["fps"] == 6.0
    expected = truth.keypoints[0:10:2].copy()
    expected[..., 0] = (expected[..., 0] + 0.5) * scale_x - 0.5
    expected[..., 1] = (expected[..., 1] + 0.5) * scale_y - 0.5
    visible = samples[0].keypoints[..., 2] > 0
    np.testing.assert_allclose(samples[0].keypoints[visible], expected[visible], atol=1e-4)


def test_variable_frame_rate_is_resampled_by_timestamp_or_skipped(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    times = [0, 0.1, 0.15, 0.4, 0.45, 0.5, 0.9, 1.0]
    write_vfr(videos / "vfr.mp4", times)
    np.save(videos / "vfr.pose.npy", index_keypoints(len(times)))
    report = prepare(config(tmp_path, videos, clip_frames=5))
    assert report["skipped"]["variable_frame_rate"]["paths"] == ["vfr.mp4"]
    report = prepare(config(tmp_path, videos, fps=5.0, clip_frames=5, out=str(tmp_path / "resampled")))
    assert report["adjusted"]["resampled_variable_rate"]["paths"] == ["vfr.mp4"]
    (sample,) = read_samples(tmp_path / "resampled").values()
    # targets 0, .2, .4, .6, .8 s -> nearest frames 0 (0 s), 2 (.15), 3 (.4), 5 (.5), 6 (.9)
    np.testing.assert_array_equal(sample.keypoints[:, Body.NOSE, 0], [0, 2, 3, 5, 6])
    np.testing.assert_allclose(sample.frames[:, 0, 0, 0], [0, 40, 60, 100, 120], atol=4)  # frames agree with keypoints


# ----------------------------------------------------------------------------- bad input


def test_bad_inputs_are_skipped_with_reasons(tmp_path):
    videos = tmp_path / "videos"
    good = write_clip(videos, "good", identity=0)
    (videos / "empty.mp4").write_bytes(b"")
    (videos / "garbage.mp4").write_bytes(b"this is not a video" * 100)
    write_clip(videos, "nopose", identity=1)
    (videos / "nopose.pose.npy").unlink()
    write_clip(videos, "wrongcount", identity=2)
    np.save(videos / "wrongcount.pose.npy", good.keypoints[:5])
    write_clip(videos, "normalised", identity=3)
    normalised = good.keypoints.copy()
    normalised[..., :2] /= 64
    np.save(videos / "normalised.pose.npy", normalised)
    write_clip(videos, "otherres", identity=4)
    other = good.keypoints.copy()
    other[..., :2] *= 4  # keypoints of a 4x larger video
    np.save(videos / "otherres.pose.npy", other)
    write_clip(videos, "nobody", identity=5)
    np.save(videos / "nobody.pose.npy", np.zeros_like(good.keypoints))
    write_clip(videos, "short", identity=6, frames=5)
    (videos / "broken.pose.npy").write_bytes(b"\x93NUMPY garbage")
    write_clip(videos, "broken", identity=7)
    (videos / "broken.pose.npy").write_bytes(b"\x93NUMPY garbage")
    frames = videos / "framefolder"
    frames.mkdir()
    Image.fromarray(good.frames[0]).save(frames / "0001.png")
    (frames / "0002.png").write_bytes(b"not a png")
    sizes = videos / "resized"
    sizes.mkdir()
    Image.fromarray(good.frames[0]).save(sizes / "1.png")
    Image.fromarray(good.frames[0][:32]).save(sizes / "2.png")
    tiny = np.zeros((9, 16, 16, 3), np.uint8)
    (videos / "tiny.mp4").write_bytes(encode_video(tiny, 12.0))
    report = prepare(config(tmp_path, videos))
    expected = {
        "empty_file": ["empty.mp4"], "unreadable_video": ["garbage.mp4"], "no_keypoints": ["nopose.mp4"],
        "keypoint_mismatch": ["broken.mp4", "normalised.mp4", "otherres.mp4", "wrongcount.mp4"], "no_person": ["nobody.mp4#clip0"],
        "too_short": ["short.mp4"], "corrupt_frames": ["framefolder"], "inconsistent_size": ["resized"], "too_small": ["tiny.mp4"],
    }
    assert {reason: entry["paths"] for reason, entry in report["skipped"].items()} == expected
    assert report["video_clips"] == 1 and report["skipped_total"] == sum(map(len, expected.values()))
    saved = json.loads((tmp_path / "out" / REPORT_NAME).read_text())
    assert saved["skipped"]["keypoint_mismatch"]["count"] == 4
    details = dict(zip(saved["skipped"]["keypoint_mismatch"]["paths"], saved["skipped"]["keypoint_mismatch"]["details"]))
    assert "5 keypoint frames for a video of 9 frames" in details["wrongcount.mp4"]
    assert "normalised" in details["normalised.mp4"] and "outside" in details["otherres.mp4"]
    assert list(read_samples(tmp_path / "out")) == [k for k in read_samples(tmp_path / "out") if k.startswith("good")]


def test_odd_sizes_are_cut_to_even_with_exact_keypoints(tmp_path):
    videos = tmp_path / "videos"
    sample = make_clip(SYNTH, "train", 0)
    folder = videos / "odd"
    folder.mkdir(parents=True)
    for index, frame in enumerate(sample.frames):
        Image.fromarray(frame[:63, :61]).save(folder / f"frame{index}.png")  # odd height and width, as frames
    np.save(videos / "odd.pose.npy", sample.keypoints)
    report = prepare(config(tmp_path, videos, frame_fps=12.0))
    assert report["adjusted"]["odd_size_cut_to_even"]["paths"] == ["odd"]
    (out,) = read_samples(tmp_path / "out").values()
    assert out.frames.shape[1:3] == (62, 60)
    assert np.abs(out.frames.astype(int) - sample.frames[:, :62, :60]).mean() < 4  # the same pixels, through H.264
    inside = (sample.keypoints[..., 0] <= 59.5) & (sample.keypoints[..., 1] <= 61.5)
    np.testing.assert_array_equal(out.keypoints[inside], sample.keypoints[inside])
    assert not out.keypoints[~inside][:, 2].any()  # cut off: absent


# ----------------------------------------------------------------------------- resuming


def test_interrupted_run_resumes_without_duplicates_or_half_shards(tmp_path):
    videos = tmp_path / "videos"
    for i in range(4):
        write_clip(videos, f"v{i}", identity=i, frames=18)  # 2 clips each
    clean = prepare(config(tmp_path, videos, out=str(tmp_path / "clean"), samples_per_shard=3))
    keys = set(read_samples(tmp_path / "clean"))
    assert clean["video_clips"] == 8 and len(keys) == 8

    seen = []

    def crash(key):
        seen.append(key)
        if len(seen) == 5:
            raise KeyboardInterrupt("simulated crash")

    with pytest.raises(KeyboardInterrupt):
        prepare(config(tmp_path, videos, samples_per_shard=3), on_sample=crash)
    out = tmp_path / "out"
    assert not list(out.rglob("*.tmp")) and len(list(out.rglob("*.tar"))) == 1  # one finished shard of 3, the open one removed
    (out / "train" / ".shard-r001-000009.tar.tmp").write_bytes(b"half")  # as a SIGKILL would leave it
    report = prepare(config(tmp_path, videos, samples_per_shard=3))
    assert report["last_run"]["samples_written"] == 5 and report["last_run"]["removed_partial_shards"] == 1
    samples = read_samples(out)
    assert set(samples) == keys and report["video_clips"] == 8
    again = prepare(config(tmp_path, videos, samples_per_shard=3))
    assert again["last_run"]["sources_processed"] == 0 and again["video_clips"] == 8
    with pytest.raises(ValueError, match="clip_frames differ"):
        prepare(config(tmp_path, videos, samples_per_shard=3, clip_frames=5))
    redo = prepare(config(tmp_path, videos, samples_per_shard=3, clip_frames=5, overwrite=True))
    assert redo["video_clips"] == 12 and len(read_samples(out)) == 12


@pytest.mark.timeout(240)  # workers forked after this process decoded a video deadlock: fail in minutes
def test_workers_give_the_same_samples(tmp_path):
    videos = tmp_path / "videos"
    for i in range(3):
        write_clip(videos, f"v{i}", identity=i)
    prepare(config(tmp_path, videos, out=str(tmp_path / "one")))
    prepare(config(tmp_path, videos, out=str(tmp_path / "two"), workers=2))
    one, two = read_samples(tmp_path / "one"), read_samples(tmp_path / "two")
    assert set(one) == set(two)
    for key in one:
        np.testing.assert_array_equal(one[key].keypoints, two[key].keypoints)
        assert np.abs(one[key].frames.astype(int) - two[key].frames).mean() < 2  # x264 is not bit-exact across processes


def test_splits_from_folders_and_by_hash(tmp_path):
    videos = tmp_path / "videos"
    for split, count in (("train", 2), ("val", 1)):
        for i in range(count):
            write_clip(videos / split, f"{split}{i}", identity=i + (10 if split == "val" else 0))
    prepare(config(tmp_path, videos))
    manifest = read_manifest(tmp_path / "out")
    assert manifest["splits"]["train"]["video"]["samples"] == 2 and manifest["splits"]["val"]["video"]["samples"] == 1
    assert sum(manifest["splits"]["train"]["buckets"]["video"].values()) == 2
    assert all(bucket.endswith("x9") for bucket in manifest["splits"]["train"]["buckets"]["video"])
    flat = tmp_path / "flat"
    for i in range(3):
        write_clip(flat, f"v{i}", identity=i)
    prepare(config(tmp_path, flat, out=str(tmp_path / "hashed"), val_fraction=0.01))
    hashed = read_manifest(tmp_path / "hashed")
    assert hashed["splits"]["val"]["video"]["samples"] == 1 and hashed["splits"]["train"]["video"]["samples"] == 2  # val never empty


# ----------------------------------------------------------------------------- image pairs


def test_image_pairs_become_paired_one_frame_samples(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    lines = ["from,to"]
    annotations = ["name:keypoints_y:keypoints_x"]
    for identity in range(2):
        a, b = make_image_pair(SYNTH, "train", identity)
        for tag, sample in (("a", a), ("b", b)):
            name = f"id{identity}_{tag}.png"
            Image.fromarray(sample.frames[0]).save(images / name)
            np.save(images / f"id{identity}_{tag}.pose.npy", sample.keypoints)
            body = to_openpose18(sample.keypoints[0])
            xs = [int(round(x)) if c > 0 else -1 for x, _, c in body]
            ys = [int(round(y)) if c > 0 else -1 for _, y, c in body]
            annotations.append(f"{name}:{json.dumps(ys)}:{json.dumps(xs)}")
        lines.append(f"id{identity}_a.png,id{identity}_b.png")
    lines.append("id9_a.png,id9_b.png")  # missing images
    lines.append("just-one-name")
    (images / "pairs.csv").write_text("\n".join(lines))
    (images / "annotations.csv").write_text("\n".join(annotations))
    report = prepare(PrepareConfig(out=str(tmp_path / "out"), images=str(images), pairs="pairs.csv", pairs_split="train", progress=False))
    assert report["image_samples"] == 4 and report["skipped"]["missing_image"]["count"] == 1 and report["skipped"]["bad_pair"]["count"] == 1
    samples = read_samples(tmp_path / "out", "images")
    for key, sample in samples.items():
        assert sample.meta["kind"] == "image" and sample.frames.shape[0] == 1 and samples[sample.meta["pair"]].meta["pair"] == key
    report = prepare(PrepareConfig(out=str(tmp_path / "deepfashion"), images=str(images), pairs="pairs.csv", pairs_split="test",
                                   image_keypoints=str(images / "annotations.csv"), progress=False))
    samples = read_samples(tmp_path / "deepfashion", "images")
    assert report["image_samples"] == 4 and all(s.meta["split"] == "test" for s in samples.values())
    table = read_deepfashion_annotations(images / "annotations.csv")
    assert table["id0_a.png"][Body.LEFT_SHOULDER, 2] in (0.0, 1.0)


# ----------------------------------------------------------------------------- keypoint formats


def test_keypoint_formats_import_to_the_same_133_points(tmp_path):
    sample = make_clip(SYNTH, "train", 0)
    kp = sample.keypoints  # (9, 133, 3)
    height, width = sample.frames.shape[1:3]
    np.save(tmp_path / "a134.npy", to_dwpose134(kp))
    np.testing.assert_array_equal(load_keypoints(tmp_path / "a134.npy", width, height), kp)
    xy = np.where(kp[..., 2:] > 0, kp[..., :2], -1.0)
    np.save(tmp_path / "xy.npy", xy)
    loaded = load_keypoints(tmp_path / "xy.npy", width, height)
    np.testing.assert_array_equal(loaded[..., :2], np.where(kp[..., 2:] > 0, kp[..., :2], 0))
    np.testing.assert_array_equal(loaded[..., 2] > 0, kp[..., 2] > 0)
    # ControlNet DWPose dicts (normalised coordinates), one per frame, in a pickle
    frames = []
    for frame in kp:
        body = to_openpose18(frame)
        visible = body[:, 2] > 0
        candidate = np.where(visible[:, None], body[:, :2] / [width, height], -1)
        subset = np.where(visible, np.arange(18), -1)[None].astype(float)
        hands = np.stack([np.where(frame[part, 2:] > 0, frame[part, :2] / [width, height], -1) for part in (slice(91, 112), slice(112, 133))])
        faces = np.where(frame[23:91, 2:] > 0, frame[23:91, :2] / [width, height], -1)[None]
        frames.append({"bodies": {"candidate": candidate, "subset": subset}, "hands": hands, "faces": faces})
    (tmp_path / "dw.pkl").write_bytes(pickle.dumps(frames))
    loaded = load_keypoints(tmp_path / "dw.pkl", width, height)
    present = kp[:, list(range(17)) + list(range(23, 133)), 2] > 0
    np.testing.assert_allclose(loaded[:, list(range(17)) + list(range(23, 133)), :2][present],
                               kp[:, list(range(17)) + list(range(23, 133)), :2][present], atol=1e-3)
    # OpenPose JSON frames in a directory (COCO-18 body, 70-point face with pupils, hands)
    directory = tmp_path / "clip_openpose"
    directory.mkdir()
    for index, frame in enumerate(kp):
        face = np.concatenate([frame[23:91], np.zeros((2, 3))])
        person = {"pose_keypoints_2d": to_openpose18(frame).ravel().tolist(), "face_keypoints_2d": face.ravel().tolist(),
                  "hand_left_keypoints_2d": frame[91:112].ravel().tolist(), "hand_right_keypoints_2d": frame[112:133].ravel().tolist()}
        (directory / f"clip_{index:012d}_keypoints.json").write_text(json.dumps({"people": [{"pose_keypoints_2d": [0.0] * 54}, person]}))
    loaded = load_keypoints(directory, width, height)
    without_feet = list(range(17)) + list(range(23, 133))
    np.testing.assert_allclose(loaded[:, without_feet], kp[:, without_feet], atol=1e-5)


def test_pickles_cannot_run_code(tmp_path):
    class Exploit:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    (tmp_path / "evil.pkl").write_bytes(pickle.dumps([Exploit()]))
    with pytest.raises(KeypointError, match="refusing to unpickle"):
        load_keypoints(tmp_path / "evil.pkl", 64, 64)
    np.save(tmp_path / "evil.npy", np.array([Exploit()], dtype=object), allow_pickle=True)
    with pytest.raises(KeypointError, match="refusing to unpickle"):
        load_keypoints(tmp_path / "evil.npy", 64, 64)


# ----------------------------------------------------------------------------- command line and training


@pytest.mark.parametrize("arguments, message", [
    (["clip_frame=9"], "clip_frame=9: no key 'clip_frame' in conf/prepare.yaml (did you mean clip_frames"),
    (["pose=openpose"], "pose='openpose' is not one of sidecar, dwpose"),
    (["clip_frames=abc"], "clip_frames: Value 'abc'"),
    (["videos"], "videos: cannot parse it"),
    (["multiprocessing_context=thread"], "multiprocessing_context='thread': must be a process start method of this platform"),
])
def test_command_line_errors_are_one_line(tmp_path, capsys, arguments, message):
    with pytest.raises(SystemExit) as info:
        main([f"out={tmp_path}", f"videos={tmp_path}", *arguments])
    error = capsys.readouterr().err
    assert info.value.code == 2 and error.startswith("error: ") and error.count("\n") == 1 and message in error


def test_command_line_config_has_the_settings_defaults():
    cfg = compose_config("prepare", ["out=unused"])
    assert PrepareConfig(**cfg) == PrepareConfig(out="unused")


def test_a_corrupt_state_file_says_how_to_start_over(tmp_path):
    videos = tmp_path / "videos"
    write_clip(videos, "a", identity=0)
    prepare(config(tmp_path, videos))
    (tmp_path / "out" / STATE_NAME).write_text('{"generator": "data.prepare", "version": 1, "sources": [')
    with pytest.raises(ValueError, match=f"{STATE_NAME} is not a usable data.prepare state file .*overwrite=true"):
        prepare(config(tmp_path, videos))
    assert prepare(config(tmp_path, videos, overwrite=True))["video_clips"] == 1


@pytest.fixture(scope="module")
def prepared(workdir):
    """A folder of videos in train/val folders prepared by the command line (beside conftest's tiny random VAE)."""
    tmp = workdir / "prepared"
    for split, identities in (("train", (0, 1)), ("val", (2,))):
        for i in identities:
            write_clip(tmp / "videos" / split, f"dancer{i}", identity=i)
    result = subprocess.run([sys.executable, "-m", "data.prepare", f"videos={tmp / 'videos'}", f"out={tmp / 'shards'}", "clip_frames=9",
                             "workers=2", "progress=false"], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "train: 2 clips" in result.stdout and (tmp / "shards" / STATE_NAME).exists()
    return tmp


def test_prepared_folder_trains_with_experiments_fit(prepared, workdir, smoke_overrides):
    run = prepared / "run"
    synthetic_only = ("data.synthetic.", "data.root=", "data.val_samples=")
    overrides = [arg for arg in smoke_overrides(workdir) if not arg.startswith(synthetic_only)]
    args = ["conf=frameprompt", *overrides, "data=prepared", f"data.root={prepared / 'shards'}", "data.val_samples=1", f"hydra.run.dir={run}"]
    result = subprocess.run([sys.executable, "-m", "experiments.fit", *args], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["global_step"] == 2


def test_text_boxes_from_an_installed_ocr_or_a_broken_sidecar(tmp_path, monkeypatch):
    import types

    calls = []

    class FakeRapidOCR:
        """rapidocr_onnxruntime's interface: engine(image) -> ([[quad, text, score], ...], elapsed)."""

        def __call__(self, image):
            calls.append(image.shape)
            return [[[[4, 5], [20, 5], [20, 12], [4, 12]], "DANCE", 0.9]], 0.01

    monkeypatch.setitem(sys.modules, "rapidocr_onnxruntime", types.SimpleNamespace(RapidOCR=FakeRapidOCR))
    videos = tmp_path / "videos"
    write_clip(videos, "ocr", identity=0)
    prepare(config(tmp_path, videos, text="ocr", ocr_stride=4))
    (sample,) = read_samples(tmp_path / "out").values()
    assert len(calls) == 3 and sample.meta["text_boxes"] == [[t, 4.0, 5.0, 20.0, 12.0] for t in range(9)]
    (videos / "ocr.text.json").write_text("[[1, 2]]")
    report = prepare(config(tmp_path, videos, out=str(tmp_path / "bad")))
    assert report["skipped"]["bad_text_boxes"]["paths"] == ["ocr.mp4"]


def test_a_failing_pose_model_skips_the_source_and_the_run_goes_on(tmp_path):
    class Broken:
        def video(self, frames, smooth=0):
            raise RuntimeError("ONNX runtime error")

    videos = tmp_path / "videos"
    write_clip(videos, "a", identity=0)
    write_clip(videos, "b", identity=1)
    settings = config(tmp_path, videos, pose="dwpose", dwpose_dir=str(tmp_path / "no-models"))
    report = prepare(settings, models=Models(settings, pose=Broken()))
    assert report["skipped"]["pose_model_error"]["paths"] == ["a.mp4", "b.mp4"] and report["video_clips"] == 0
    assert "ONNX runtime error" in report["skipped"]["pose_model_error"]["details"][0]


def test_prepared_data_config_needs_a_root_and_matches_the_synthetic_keys():
    from hydra import compose, initialize_config_dir
    from omegaconf.errors import MissingMandatoryValue

    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        prepared = compose("fit", overrides=["data=prepared"]).data
        synthetic = compose("fit").data
    with pytest.raises(MissingMandatoryValue, match="data.root"):
        _ = prepared.root  # never falls back to the puppets' directory
    assert set(prepared) == set(synthetic) and prepared.synthetic is None
