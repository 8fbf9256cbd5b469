"""Still pictures of comparison grids: the frames a README figure shows, and clips of several sizes side by side."""

import numpy as np

from common.video import side_by_side, still_grid


def test_still_grid_stacks_evenly_spaced_frames_first_and_last_included():
    grid = np.stack([np.full((2, 3, 3), index, dtype=np.uint8) for index in range(17)])  # (T, H, W, 3)
    still = still_grid(grid, frames=4)
    assert still.shape == (8, 3, 3)
    assert [int(still[row * 2, 0, 0]) for row in range(4)] == [0, 5, 11, 16]
    assert still_grid(grid[:2], frames=4).shape == (4, 3, 3)  # a short clip gives what it has


def test_side_by_side_pads_shorter_images_with_white_and_separates_them():
    tall, short = np.zeros((4, 2, 3), np.uint8), np.zeros((2, 3, 3), np.uint8)
    row = side_by_side([tall, short], gap=1)
    assert row.shape == (4, 2 + 1 + 3, 3)
    assert (row[:, 2] == 255).all() and (row[2:, 3:] == 255).all() and not row[:2, 3:].any()
