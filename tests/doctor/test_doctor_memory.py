"""te doctor's memory stays flat in the number of rows (docs/doctor.md, "Scale"): it never holds a data set's
features whole, but reads them from the cache a bounded block at a time (transfer_engine/doctor/matrix.py), and
its probe fits a bounded sample stratified by class (`fit_sample`, transfer_engine/train/probe.py). Here every
bound is set far below the planted set's size: no read may exceed the largest bound, and te doctor must still
find what it finds with its defaults."""

from __future__ import annotations

import numpy as np
import torch

from transfer_engine.train.probe import fit_sample

from .conftest import doctor_on


def _quiet(line: str) -> None:
    pass


def test_the_cached_features_read_like_a_normalised_array_and_nothing_stays_mapped(planted):
    from transfer_engine.doctor.rows import load_rows

    rows = load_rows(str(planted.cache), dataset="planted", backbone=None, space=None, say=_quiet)
    try:
        matrix = rows.features
        whole = np.asarray(matrix)
        assert whole.shape == matrix.shape == (len(rows.keys), 1280)
        assert np.allclose(np.linalg.norm(whole, axis=1), 1.0, atol=1e-5)
        pairs = np.array([[3, 0], [5, 5], [len(rows.keys) - 1, 2]])
        assert np.array_equal(matrix[pairs], whole[pairs]) and np.array_equal(matrix[2:7], whole[2:7])
        raw = matrix.raw(np.array([4])).numpy()[0]
        assert np.linalg.norm(raw) > 1.5 and np.allclose(raw / np.linalg.norm(raw), whole[4], atol=1e-6)
        # the shards' pages a read touched are not kept mapped (resident) for the next read
        assert not matrix.space.cache.maps._maps
    finally:
        rows.close()


def test_with_every_bound_below_the_data_sets_size_no_read_exceeds_it_and_the_findings_hold(
        planted, diagnosis, tmp_path, monkeypatch):
    from transfer_engine.doctor import impact, label_issues, matrix, neighbours
    from transfer_engine.train import probe

    for module in (matrix, impact):
        monkeypatch.setattr(module, "BLOCK_ROWS", 16)
    monkeypatch.setattr(neighbours, "EXACT_MAX_ROWS", 0)  # the FAISS way, as above 20,000 images
    monkeypatch.setattr(neighbours, "PCA_SAMPLE", 48)
    monkeypatch.setattr(neighbours, "RESCORE_ROWS", 2)   # 2 rows and their candidates: 2 x 25 rows
    monkeypatch.setattr(probe, "_CHUNK", 16)
    monkeypatch.setattr(label_issues, "PROBE_FIT_ROWS", 70)
    largest = max(48, 2 * (neighbours.CANDIDATES + 1), 70 + 10)  # a stratified sample may pass its size by a class
    reads: list[int] = []
    read = matrix.CachedMatrix.raw

    def counted(self, index):
        reads.append(len(range(*index.indices(len(self)))) if isinstance(index, slice) else int(np.asarray(index).size))
        return read(self, index)

    monkeypatch.setattr(matrix.CachedMatrix, "raw", counted)
    bounded = doctor_on(planted.cache, "planted", tmp_path / "out")
    images = len(bounded.rows.keys)
    pool = len(bounded.labels.pool)
    assert bounded.method.startswith("FAISS") and images > largest and pool * 4 // 5 > 70
    assert reads and max(reads) <= largest, sorted(reads)[-5:]
    # the same copies, and the planted label errors still among the flagged
    assert bounded.leaked == diagnosis.leaked
    flagged = set(bounded.label_error_records())
    flipped = [r for r, path in enumerate(bounded.rows.paths) if path in planted.flipped]
    assert sum(r in flagged for r in flipped) >= 3
    assert bounded.to_dict()["label_errors"]["judged"] == pool


def test_a_bounded_fit_keeps_each_class_its_share_and_at_least_one_row():
    labels = torch.tensor([0] * 900 + [1] * 90 + [2] * 3)
    positions = torch.arange(len(labels))
    sample = fit_sample(positions, labels, 100, seed=0)
    assert torch.bincount(labels[sample]).tolist() == [91, 9, 1]
    assert torch.equal(sample, torch.sort(torch.unique(sample)).values)  # sorted, no row twice
    assert torch.equal(sample, fit_sample(positions, labels, 100, seed=0))  # the same sample for the same seed
    assert torch.equal(fit_sample(positions, labels, None, seed=0), positions)
    assert torch.equal(fit_sample(positions[:50], labels, 100, seed=0), positions[:50])  # under the bound: every row
