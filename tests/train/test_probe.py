"""te doctor's probe (transfer_engine/train/probe.py) given its pool as rows of the one matrix it already
holds (`GatheredRows`) answers as when given a copy of the pool: the same out-of-fold and test
probabilities, bit for bit, with copies of one image sharing a row."""

from __future__ import annotations

import torch

from transfer_engine.train import GatheredRows, out_of_fold_probabilities


def test_a_gathered_pool_gives_the_same_probabilities_as_a_copied_one():
    gen = torch.Generator().manual_seed(0)
    images, classes = 90, 3
    centres = torch.randn(classes, 16, generator=gen) * 2
    image_class = torch.arange(images) % classes
    raw = (centres[image_class] + torch.randn(images, 16, generator=gen)).clamp_min(0)
    norms = raw.norm(dim=1)
    matrix = raw / norms[:, None]
    pool_rows = torch.cat([torch.arange(70), torch.tensor([3, 4, 5])])  # three images copied: one row each
    test_rows = torch.arange(70, images)
    labels = image_class[pool_rows]
    keys = [f"{u:064x}" for u in pool_rows.tolist()]
    copied = out_of_fold_probabilities(matrix[pool_rows] * norms[pool_rows, None], labels, keys, classes,
                                       weight_decay=1e-2, held_out=matrix[test_rows] * norms[test_rows, None])
    gathered = out_of_fold_probabilities(GatheredRows(matrix, pool_rows, norms), labels, keys, classes,
                                         weight_decay=1e-2, held_out=GatheredRows(matrix, test_rows, norms))
    assert torch.equal(copied.fold, gathered.fold)
    assert torch.equal(copied.probabilities, gathered.probabilities)
    assert torch.equal(copied.held_out, gathered.held_out)
    assert (copied.probabilities.argmax(1) == labels).float().mean() > 0.8  # a probe that learned something
