"""Per-part colours are read along the bones the keypoints give, on the person only."""

import torch

from metrics.parts import PARTS, part_colour_error, part_colours


def standing_person(height: int = 64, width: int = 48) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A video (1, 3, 2, H, W) in [0, 1]: a red torso, green arms, blue legs on grey; its keypoints (1, 2, 17, 3) and person mask."""
    video = torch.full((1, 3, 2, height, width), 0.5)
    mask = torch.zeros(1, 2, height, width, dtype=torch.bool)
    keypoints = torch.zeros(1, 2, 17, 3)
    joints = {0: (24, 6), 5: (30, 14), 6: (18, 14), 7: (38, 14), 8: (10, 14), 9: (46, 14), 10: (2, 14),
              11: (28, 34), 12: (20, 34), 13: (28, 48), 14: (20, 48), 15: (28, 62), 16: (20, 62)}
    for index, (x, y) in joints.items():
        keypoints[0, :, index] = torch.tensor([x, y, 1.0])
    regions = [(slice(10, 40), slice(16, 33), (1.0, 0.0, 0.0)), (slice(11, 18), slice(0, 48), (0.0, 1.0, 0.0)),
               (slice(34, 64), slice(17, 32), (0.0, 0.0, 1.0)), (slice(0, 11), slice(20, 29), (1.0, 0.8, 0.6))]
    for rows, cols, colour in regions:
        video[0, :, :, rows, cols] = torch.tensor(colour)[:, None, None, None]
        mask[0, :, rows, cols] = True
    return video, keypoints, mask


def test_part_colours_follow_the_bones():
    video, keypoints, mask = standing_person()
    colours, read = part_colours(video, keypoints, mask)
    assert colours.shape == (1, 2, len(PARTS), 3) and read.all()
    names = list(PARTS)
    assert torch.allclose(colours[0, 0, names.index("torso")], torch.tensor([1.0, 0.0, 0.0]))
    assert torch.allclose(colours[0, 0, names.index("forearm_left")], torch.tensor([0.0, 1.0, 0.0]))
    assert torch.allclose(colours[0, 0, names.index("shin_right")], torch.tensor([0.0, 0.0, 1.0]))


def test_part_colour_error_is_zero_for_the_truth_and_grows_with_wrong_clothes():
    video, keypoints, mask = standing_person()
    assert float(part_colour_error(video, video, keypoints, mask)) == 0.0
    recoloured = video.clone()
    recoloured[0, 0][video[0, 0] == 1.0] = 0.0  # the red channel off: the torso turns black, the face loses its red
    assert float(part_colour_error(recoloured, video, keypoints, mask)) > 0.1
    hidden = keypoints.clone()
    hidden[..., 2] = 0.0  # no confident keypoints: nothing is read
    _, read = part_colours(video, hidden, mask)
    assert not read.any() and float(part_colour_error(recoloured, video, hidden, mask)) == 0.0
