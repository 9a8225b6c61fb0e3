"""The neighbours' vote te doctor averages with its probe's probabilities (transfer_engine/doctor/label_issues.py):
only train and val labels vote, an image's own copies never vouch for it, and an image with no labelled
neighbour gets no vote (the probe alone judges it)."""

from __future__ import annotations

import numpy as np

from transfer_engine.doctor.label_issues import neighbour_vote
from transfer_engine.doctor.neighbours import Neighbours
from transfer_engine.doctor.rows import Rows


def _rows() -> Rows:
    # records: image 0 twice (train, under labels 0 and 1: a conflicting copy), images 1 and 2 in train
    # (label 2), image 3 in test (label 1), image 4 in val (label 0)
    record_key = np.array([0, 0, 1, 2, 3, 4])
    return Rows("toy", None, ["a", "b", "c"], "space", "backbone", [f"{i}.png" for i in range(6)],
                np.array([0, 1, 2, 2, 1, 0]), np.array(["train", "train", "train", "train", "test", "val"]),
                record_key, [f"k{u}" for u in range(5)], np.eye(5, dtype=np.float32))


def test_train_and_val_neighbours_vote_test_labels_and_the_images_own_copies_do_not():
    rows = _rows()
    # image 0's neighbours: 1, 2 (label 2) and 3 (test); image 4's: only 3 (test) and none
    index = np.array([[1, 2, 3], [0, 2, 3], [0, 1, 4], [0, 1, 2], [3, -1, -1]])
    found = Neighbours(index, np.zeros(index.shape, np.float32), "exact")
    pool = rows.in_split("train", "val")
    votes = neighbour_vote(rows, pool, found)
    # both records of image 0: all of the vote for label 2, whatever the copy beside them says
    assert np.allclose(votes[0], [0, 0, 1]) and np.allclose(votes[1], [0, 0, 1])
    # image 1: image 0 is one vote split between its two labels, image 2 one vote for label 2
    assert np.allclose(votes[2], [0.25, 0.25, 0.5])
    # image 4 (val): its only neighbour is a test image, so no vote
    assert np.allclose(votes[pool.tolist().index(5)], 0)
