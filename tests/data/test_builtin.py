"""builtin:digits: the real labelled images that work offline."""

import numpy as np
import pytest

from transfer_engine.data import load_builtin
from transfer_engine.errors import UsageError


def test_digits_are_the_1797_real_scans_as_8bit_images():
    data = load_builtin("builtin:digits")
    assert len(data) == 1797 and data.images.shape == (1797, 8, 8)
    assert data.images.dtype == np.uint8 and data.class_names == [str(i) for i in range(10)]
    assert np.bincount(data.labels).min() >= 170  # every class well represented
    # dark ink on white paper: the border of a scan is mostly blank (white)
    assert data.images[:, :, 0].mean() > 200
    assert data.pil(0).mode == "RGB" and data.pil(0).size == (8, 8)


def test_unknown_builtin_lists_what_exists():
    with pytest.raises(UsageError, match="available: builtin:digits"):
        load_builtin("builtin:mnist")
