"""Real features in a real cache, without running a backbone.

`digit_cache(...)` puts the committed efficientnet_lite0 features of the first 900 builtin:digits images
(tests/cache/fixtures/digit_features_efficientnet_lite0.npz) into a new cache, keyed by the content keys
`te extract` gives those images and split as it splits them, with the provenance it records: the cache
that `te extract --backbone efficientnet_lite0 --data builtin:digits --limit 900` writes, in a second.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

FIXTURE = Path(__file__).resolve().parents[1] / "cache" / "fixtures" / "digit_features_efficientnet_lite0.npz"


def digit_records():
    """(records, class_names) of the first 900 digits, as te extract records them."""
    from transfer_engine.cache import Record
    from transfer_engine.data.sources import content_key, derived_split, open_source

    source = open_source("builtin:digits")
    samples = list(source.samples())[:900]
    records = []
    for s in samples:
        key = content_key(source.read_bytes(s))
        records.append(Record(s.path, key, s.label, s.split or derived_split(key)))
    return records, list(source.class_names)


def lite0_transform() -> dict:
    """efficientnet_lite0's preprocessing, from its plugin module (the registry would import every backbone
    plugin, timm's included: seconds)."""
    import te_efficientnet_lite

    spec = next(s for s in te_efficientnet_lite.backbones() if s.name == "efficientnet_lite0")
    return spec.preprocess_for(None).to_dict()


def fill_cache(root: Path, features: torch.Tensor, *, stored: str = "int8", provenance: dict | None | bool = True,
               records=None, class_names=None, name: str = "digits", backbone: str = "efficientnet_lite0",
               weights_digest: str | None = None, transform: dict | None = None) -> str:
    """Write features (row i = record i) and the data set into the cache at `root`; returns the space id.

    provenance: True for efficientnet_lite0's (as te extract records it), a dict, or False/None for none.
    """
    from transfer_engine.cache import FeatureCache, FeatureSpace

    data = np.load(FIXTURE)
    if records is None:
        records, class_names = digit_records()
    if provenance is True:
        provenance = {"backbone": backbone, "weights": str(data["weights"]), "seed": None,
                      "plugin": "te-efficientnet-lite", "data": "builtin:digits", "dataset": name}
    with FeatureCache.open(root) as cache:
        space = cache.space(FeatureSpace(backbone=backbone, weights_digest=weights_digest or str(data["weights_digest"]),
                                         transform=lite0_transform() if transform is None else transform,
                                         dim=features.shape[1], stored=stored))
        space.append([r.key for r in records], features)
        cache.put_dataset(name, records, class_names)
        if provenance:
            cache.set_provenance(space.id, provenance)
        return space.id


@pytest.fixture(scope="session")
def digit_features():
    """(features float32 [900, 1280], labels int64 [900]) of the fixture."""
    data = np.load(FIXTURE)
    return torch.from_numpy(data["features"]), torch.from_numpy(data["labels"])


@pytest.fixture(scope="session")
def digit_cache(tmp_path_factory, digit_features) -> Path:
    """A cache holding the 900 real digit features (int8, as te extract stores them) with provenance.
    Shared by the tests of this folder: they only read it."""
    root = tmp_path_factory.mktemp("digit-cache")
    fill_cache(root, digit_features[0])
    return root
