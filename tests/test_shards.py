"""Shard format: atomic writer, round trip, bad samples counted and skipped, manifests."""

import io
import json
import pickle

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from data.shards import (
    BadSample,
    BadSampleCounter,
    Sample,
    ShardWriter,
    decode_sample,
    decode_video,
    encode_sample,
    encode_video,
    iter_shard_samples,
    read_manifest,
    write_manifest,
)

HEIGHT, WIDTH, FRAMES = 48, 64, 9


def _video(frames=FRAMES, phase=0.0):
    """Smooth test video: a moving colour gradient with a moving disc, uint8 (T, H, W, 3)."""
    t = np.arange(frames)[:, None, None]
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    red = 128 + 100 * np.sin(x / 9.0 + t / 3.0 + phase)
    green = 128 + 100 * np.cos(y / 7.0 - t / 4.0)
    blue = np.where((x - 20 - 3 * t) ** 2 + (y - 24) ** 2 < 80, 230, 40)
    return np.stack([red, green, blue], axis=-1).astype(np.uint8)


def _sample(key, kind="video", mask=True, phase=0.0):
    """A valid sample (video or one-frame image) with keypoints and an optional person mask."""
    frames = _video(phase=phase) if kind == "video" else _video(1, phase)
    count = len(frames)
    rng = np.random.default_rng(len(key))
    keypoints = np.concatenate([rng.uniform(0, WIDTH, (count, 133, 2)), rng.uniform(0, 1, (count, 133, 1))], -1).astype(np.float32)
    meta = {"identity": "id-" + key, "split": "train", "kind": kind, "fps": 12.0, "width": WIDTH, "height": HEIGHT,
            "num_frames": count, "text_boxes": [[0, 1, 2, 30, 12]], "source": "test"}
    person = rng.uniform(size=(count, HEIGHT, WIDTH)) < 0.3 if mask else None
    plate = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8) if mask else None
    return Sample(key=key, frames=frames, keypoints=keypoints, meta=meta, person_mask=person, plate=plate)


def _psnr(a, b):
    """Mean per-frame PSNR (dB) of uint8 videos."""
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean(axis=(1, 2, 3))
    return float(np.mean(10 * np.log10(255.0**2 / mse)))


def test_round_trip_keeps_keypoints_meta_masks_and_video_quality(tmp_path):
    samples = [_sample("v0"), _sample("img0", "image"), _sample("v1", mask=False, phase=1.0), _sample("v2", phase=2.0), _sample("img1", "image", phase=3.0)]
    with ShardWriter(tmp_path, prefix="shard", max_samples=2) as writer:
        for sample in samples:
            writer.write(sample)
    assert [p.name for p in writer.paths] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [p.name for p in writer.paths]  # no temporary files left
    counter = BadSampleCounter()
    decoded = list(iter_shard_samples(writer.paths, counter))
    assert counter.total == 0 and [s.key for s in decoded] == [s.key for s in samples]
    for original, loaded in zip(samples, decoded):
        np.testing.assert_array_equal(loaded.keypoints, original.keypoints)
        assert loaded.keypoints.dtype == np.float32 and loaded.meta == original.meta
        if original.person_mask is None:
            assert loaded.person_mask is None and loaded.plate is None
        else:
            np.testing.assert_array_equal(loaded.person_mask, original.person_mask)
            np.testing.assert_array_equal(loaded.plate, original.plate)  # PNG: exact
        if original.meta["kind"] == "image":
            np.testing.assert_array_equal(loaded.frames, original.frames)  # PNG is lossless
        else:
            assert loaded.frames.shape == original.frames.shape and _psnr(loaded.frames, original.frames) > 38.0


def test_mask_width_not_a_multiple_of_eight_round_trips(tmp_path):
    sample = _sample("odd")
    sample.frames = sample.frames[:, :, :58]
    sample.person_mask = sample.person_mask[:, :, :58]
    sample.plate = sample.plate[:, :58]
    sample.meta["width"] = 58
    decoded = decode_sample({**encode_sample(sample), "__url__": "mem"})
    np.testing.assert_array_equal(decoded.person_mask, sample.person_mask)


def test_encode_video_refuses_odd_sizes_and_decode_names_the_file():
    with pytest.raises(ValueError, match="even"):
        encode_video(np.zeros((2, 47, 64, 3), np.uint8), 12)
    with pytest.raises(ValueError, match="clip-7.mp4: unreadable video"):
        decode_video(b"\x00not an mp4" * 50, "clip-7.mp4")


def test_writer_rejects_inconsistent_samples():
    sample = _sample("plate")
    sample.plate = sample.plate[:-1]
    with pytest.raises(ValueError, match="sample 'plate': plate uint8"):
        encode_sample(sample)
    sample = _sample("bad")
    sample.keypoints = sample.keypoints[:-1]
    with pytest.raises(ValueError, match="'bad'.*disagree"):
        encode_sample(sample)
    with pytest.raises(ValueError, match="key must match"):
        encode_sample(_sample("has.dot"))


def test_writer_drops_the_partial_shard_on_error(tmp_path):
    with pytest.raises(RuntimeError):
        with ShardWriter(tmp_path, max_samples=2) as writer:
            for index in range(3):
                writer.write(_sample(f"s{index}"))
            raise RuntimeError("crash while writing")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shard-000000.tar"]


def _png(image):
    """PNG bytes of a uint8 (H, W, 3) image."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def _raw(key, **changes):
    """Encoded raw dict of a good sample with members replaced (None deletes a member)."""
    raw = encode_sample(_sample(key))
    for member, value in changes.items():
        member = member.replace("_", ".")
        if value is None:
            raw.pop(member)
        else:
            raw[member] = value
    return raw


def _npy(array):
    """``.npy`` bytes of an array (pickle allowed, to build hostile input)."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


def _bad_dataset(tmp_path):
    """Three shards: mixed good/bad samples, a truncated shard, then a good shard. Returns (paths, good keys)."""
    with ShardWriter(tmp_path, prefix="mixed", max_samples=100) as writer:
        writer.write_encoded(_raw("good0"))
        writer.write_encoded(_raw("corrupt", mp4=b"\x00\x00\x00\x18ftypisom" + b"garbage" * 100))
        writer.write_encoded(_raw("nopose", pose_npy=None))
        writer.write_encoded(_raw("mismatch", pose_npy=_npy(np.zeros((FRAMES - 2, 133, 3), np.float32))))
        writer.write_encoded(_raw("pickled", pose_npy=_npy(np.array([{"a": 1}], dtype=object))))
        writer.write_encoded(_raw("badjson", json=b"{not json"))
        writer.write_encoded(_raw("good1"))
    with ShardWriter(tmp_path, prefix="cut", max_samples=100) as writer:
        for index in range(3):
            writer.write(_sample(f"cut{index}", phase=index))
    cut = writer.paths[0]
    data = cut.read_bytes()
    cut.write_bytes(data[: len(data) // 2])  # cuts the second sample's members
    with ShardWriter(tmp_path, prefix="tail", max_samples=100) as writer:
        writer.write(_sample("good2"))
    return [tmp_path / "mixed-000000.tar", cut, writer.paths[0]], ["good0", "good1", "cut0", "good2"]


EXPECTED_BAD = {"unreadable_video": 1, "missing_key": 1, "frame_count_mismatch": 1, "bad_keypoints": 1, "bad_metadata": 1, "truncated": 1}


def test_bad_samples_are_skipped_counted_by_reason_and_iteration_continues(tmp_path):
    paths, good = _bad_dataset(tmp_path)
    counter = BadSampleCounter()
    assert [s.key for s in iter_shard_samples(paths, counter)] == good
    assert counter.as_dict() == EXPECTED_BAD
    assert counter.examples("missing_key") == [f"{paths[0]}:nopose"]
    assert "truncated: 1" in counter.summary() and str(paths[1]) in counter.summary()


def test_webdataset_pipeline_with_the_counter_handler_counts_the_same(tmp_path):
    paths, good = _bad_dataset(tmp_path)
    counter = BadSampleCounter()
    pipeline = wds.DataPipeline(
        wds.SimpleShardList([str(p) for p in paths]),
        wds.tarfile_to_samples(handler=counter.handler),
        wds.map(decode_sample, handler=counter.handler),
    )
    assert [s.key for s in pipeline] == good
    assert counter.as_dict() == EXPECTED_BAD


def test_handler_reraises_unrelated_errors():
    with pytest.raises(KeyError):
        BadSampleCounter().handler(KeyError("a bug, not bad data"))


def test_decode_sample_reasons_and_messages():
    with pytest.raises(BadSample) as caught:
        decode_sample({**_raw("k", json=None), "__url__": "shards/a.tar"})
    assert caught.value.reason == "missing_key" and caught.value.key == "k"
    assert str(caught.value).startswith("shards/a.tar: sample 'k': missing_key")
    meta = json.loads(_raw("k")["json"])
    meta["width"] = 10
    with pytest.raises(BadSample, match="bad_metadata"):
        decode_sample({**_raw("k", json=json.dumps(meta).encode()), "__url__": "u"})
    with pytest.raises(BadSample, match="bad_mask"):
        decode_sample({**_raw("k", mask_npy=_npy(np.zeros((FRAMES, HEIGHT, 3), np.uint8))), "__url__": "u"})
    with pytest.raises(BadSample, match="bad_keypoints"):
        decode_sample({**_raw("k", pose_npy=_npy(np.full((FRAMES, 133, 3), np.nan, np.float32))), "__url__": "u"})
    with pytest.raises(BadSample, match=r"bad_plate \(plate is 8x4, frames are"):
        decode_sample({**_raw("k"), "plate.png": _png(np.zeros((4, 8, 3), np.uint8)), "__url__": "u"})
    with pytest.raises(BadSample, match="bad_plate"):
        decode_sample({**_raw("k"), "plate.png": b"not a png", "__url__": "u"})


def test_bad_sample_pickles_and_rejects_unknown_reasons():
    bad = pickle.loads(pickle.dumps(BadSample("truncated", "k", "u.tar", "cut")))
    assert (bad.reason, bad.key, bad.url, bad.detail) == ("truncated", "k", "u.tar", "cut")
    with pytest.raises(ValueError, match="unknown bad-sample reason"):
        BadSample("weird", "k", "u")


def test_counter_merge_pickle_and_reset():
    first, second = BadSampleCounter(max_examples=2), BadSampleCounter()
    for key in "abc":
        first.add(BadSample("missing_key", key, "s.tar"))
    second.add(BadSample("truncated", "", "t.tar"))
    second.add(BadSample("missing_key", "d", "s.tar"))
    first.merge(pickle.loads(pickle.dumps(second)))
    assert first.as_dict() == {"missing_key": 4, "truncated": 1} and first.total == 5
    assert first.examples("missing_key") == ["s.tar:a", "s.tar:b"] and first.examples("truncated") == ["t.tar"]
    first.reset()
    assert first.as_dict() == {} and first.summary() == "bad samples: none"


def test_iteration_refuses_urls_and_names_missing_shards(tmp_path):
    with pytest.raises(ValueError, match="never pipe:"):
        list(iter_shard_samples(["pipe:cat /etc/passwd"]))
    with pytest.raises(FileNotFoundError, match="nothing.tar"):
        list(iter_shard_samples([tmp_path / "nothing.tar"]))


def test_manifest_round_trip_and_missing_manifest_says_how_to_make_it(tmp_path):
    info = {"generator": "test", "splits": {"train": {"video": {"shards": ["train/shard-000000.tar"], "samples": 3}}}}
    write_manifest(tmp_path / "data", info)
    assert read_manifest(tmp_path / "data") == info
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["manifest.json"]
    with pytest.raises(FileNotFoundError, match=r"python -m data.synthetic out=.*elsewhere"):
        read_manifest(tmp_path / "elsewhere")


def test_the_digest_tells_regenerated_content_apart_under_the_same_key():
    def digest(raw):
        return decode_sample({"__key__": "clip", "__url__": "mem", **raw}).digest

    first = encode_sample(_sample("clip", phase=0.0))  # H.264 is not byte-deterministic: the same bytes, not the same pixels, give the same digest
    assert digest(first) == digest(dict(first)) != digest(encode_sample(_sample("clip", phase=1.0)))
    moved = _sample("clip")
    moved.keypoints[..., 0] += 1  # every x one pixel to the right: other pose maps, other latents
    assert digest({**first, "pose.npy": encode_sample(moved)["pose.npy"]}) != digest(first)
