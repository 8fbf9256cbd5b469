"""Generation as the system's predict_step under trainer.predict: the trainer's precision applies,
the clip writer keeps lossless frames, and the baseline is an option of the same path."""

import lightning as L
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from animate.callbacks import ClipWriter

from tiny_systems import fake_batch, frameprompt


def predict(system, directory, precision="32-true", model="trained"):
    """Run trainer.predict over one fabricated batch with the clip writer; returns what the backbone saw."""
    batch = fake_batch() | {"key": ["clip_a", "clip_b"], "keypoints": torch.rand(2, 5, 133, 3), "has_person_mask": torch.tensor([True, False]),
                           "plate": torch.rand(2, 3, 32, 32) * 2 - 1, "has_plate": torch.tensor([True, False])}
    seen = []
    forward = system.backbone.forward

    def recording(packed):
        seen.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)
        return forward(packed)

    system.backbone.forward = recording
    system.prediction |= {"steps": 2, "baseline": "repeat_reference" if model == "repeat_reference" else None}
    trainer = L.Trainer(accelerator="cpu", precision=precision, logger=False, enable_progress_bar=False, callbacks=[ClipWriter(directory, name=model, fps=4)])
    trainer.predict(system, dataloaders=DataLoader([batch], batch_size=None), return_predictions=False)
    return batch, seen


def test_the_trainer_precision_reaches_generation(tmp_path):
    _, seen = predict(frameprompt().eval(), tmp_path, precision="bf16-mixed")
    assert seen and all(dtype == torch.bfloat16 for dtype in seen)
    _, seen = predict(frameprompt().eval(), tmp_path / "fp32")
    assert seen and all(dtype is None for dtype in seen)


def test_the_writer_keeps_clips_targets_sidecars_and_grids(tmp_path):
    batch, _ = predict(frameprompt().eval(), tmp_path)
    for key in ("clip_a", "clip_b"):
        assert len(list((tmp_path / "trained" / key).glob("frame_*.png"))) == 5
        truth = np.stack([np.asarray(Image.open(f)) for f in sorted((tmp_path / "target" / key).glob("*.png"))])
        expected = ((batch["video"][0 if key == "clip_a" else 1].clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 3, 0).numpy()
        np.testing.assert_array_equal(truth, expected)  # lossless
        assert (tmp_path / "grids" / "trained" / f"{key}.mp4").is_file()
    assert np.load(tmp_path / "target" / "clip_a.pose.npy").shape == (5, 133, 3)
    assert (tmp_path / "target" / "clip_a.mask.npy").is_file() and not (tmp_path / "target" / "clip_b.mask.npy").exists()
    plate = np.load(tmp_path / "target" / "clip_a.plate.npy")
    np.testing.assert_array_equal(plate, ((batch["plate"][0] + 1) * 127.5).round().byte().permute(1, 2, 0).numpy())
    assert not (tmp_path / "target" / "clip_b.plate.npy").exists()
    assert not list(tmp_path.rglob("*.tmp"))


def test_repeat_the_reference_is_a_model_of_the_same_path(tmp_path):
    batch, seen = predict(frameprompt().eval(), tmp_path, model="repeat_reference")
    assert not seen  # no forward pass
    frames = [np.asarray(Image.open(f)) for f in sorted((tmp_path / "repeat_reference" / "clip_a").glob("*.png"))]
    reference = ((batch["reference"][0].clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    assert len(frames) == 5 and all((frame == reference).all() for frame in frames)
