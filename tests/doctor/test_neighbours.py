"""The two neighbour searches te doctor chooses between agree where it matters: on real features (the committed
EfficientNet-Lite0 features of 900 digits), the FAISS way finds the close pairs the exact search finds, with
the same (exact) cosines, and neither holds an N x N matrix."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from transfer_engine.doctor.neighbours import nearest

FIXTURE = Path(__file__).resolve().parents[1] / "cache" / "fixtures" / "digit_features_efficientnet_lite0.npz"


def test_the_faiss_way_finds_the_close_pairs_of_the_exact_search_with_their_exact_cosines():
    x = np.load(FIXTURE)["features"].astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    exact = nearest(x)
    approximate = nearest(x, exact_max_rows=0)
    assert exact.method.startswith("exact") and approximate.method.startswith("FAISS")

    def close(found):
        return {(a, int(b)): float(c) for a, (row, cos) in enumerate(zip(found.index, found.cosine))
                for b, c in zip(row, cos) if c >= 0.97}

    want, got = close(exact), close(approximate)
    assert len(want) > 20 and len(set(want) & set(got)) >= 0.95 * len(want)
    assert all(abs(want[p] - got[p]) < 1e-4 for p in set(want) & set(got))
    assert not (exact.index == np.arange(len(x))[:, None]).any()  # an image is not its own neighbour
    assert (np.diff(exact.cosine, axis=1) <= 1e-6).all()          # best first
