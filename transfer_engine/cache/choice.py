"""Which data set and which feature space a command reads: the one rule te train, te doctor and te cache
export share (--dataset, --backbone, --space).

A cache can hold several data sets and several spaces (backbones, stored dtypes, precisions). With no
--dataset the cache's only data set is meant. With no --space, the space meant is the one that holds
every row the command needs; none, or more than one, is a one-line error that lists the spaces.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Sequence

from transfer_engine.errors import UsageError

if TYPE_CHECKING:
    from transfer_engine.cache.rows import CachedSpace
    from transfer_engine.cache.store import FeatureCache

Coverage = Callable[["CachedSpace"], "tuple[int, int]"]
"""(rows missing, rows wanted) of a space: what a command needs of it."""


def choose_dataset(store: "FeatureCache", name: str | None) -> str:
    """`name`, or the cache's only data set when None.

    Raises:
        UsageError: no name given and the cache holds no data set, or several.
    """
    names = store.datasets()
    if name is not None:
        return name  # store.dataset(name) names the ones it has when this one is missing
    if len(names) == 1:
        return names[0]
    if not names:
        raise UsageError(f"cache {store.root} holds no data set; fill it with te extract --data SRC --cache {store.root}")
    raise UsageError(f"cache {store.root} holds {len(names)} data sets ({', '.join(names)}); choose one with --dataset")


def key_coverage(keys: Sequence[str]) -> Coverage:
    """The coverage of a list of row keys (distinct or not; each key counts once)."""
    distinct = list(dict.fromkeys(keys))

    def coverage(space: "CachedSpace") -> tuple[int, int]:
        return sum(not have for have in space.contains(distinct)), len(distinct)

    return coverage


def record_coverage(store: "FeatureCache", dataset: str, split: str | None = None) -> Coverage:
    """The coverage of a data set's records (of one split, or all), counted by the index without reading
    the records into memory."""
    size = store.index.dataset_size(dataset, split)
    wanted = size[1] if size else 0

    def coverage(space: "CachedSpace") -> tuple[int, int]:
        return wanted - space.records_covered(dataset, split), wanted

    return coverage


def choose_space(store: "FeatureCache", dataset: str, coverage: Coverage, *, backbone: str | None = None,
                 space_id: str | None = None) -> "CachedSpace":
    """The feature space to read data set `dataset` from.

    Args:
        store: the open cache.
        dataset: the data set's name (for the messages).
        coverage: which rows the command needs (`key_coverage`, `record_coverage`).
        backbone: only spaces of this backbone (--backbone).
        space_id: this space, by id or an unambiguous prefix (--space); it must hold every row.

    Returns:
        The chosen `CachedSpace`.

    Raises:
        UsageError: no such backbone or space, no space holding every row, or several (listed).
    """
    if space_id is not None:
        chosen = store.open_space(space_id)
        if backbone is not None and chosen.config.backbone != backbone:
            raise UsageError(f"--space {space_id} is a space of backbone {chosen.config.backbone!r}, not {backbone!r}")
        _require_rows(chosen, dataset, coverage)
        return chosen
    spaces = store.spaces()
    if backbone is not None:
        spaces = [s for s in spaces if s.backbone == backbone]
        if not spaces:
            have = ", ".join(sorted({s.backbone for s in store.spaces()})) or "none"
            raise UsageError(f"cache {store.root} has no features of backbone {backbone!r} (it has: {have}); "
                             f"run te extract --backbone {backbone} --cache {store.root} first")
    if not spaces:
        raise UsageError(f"cache {store.root} holds no feature space; run te extract first")
    opened = [store.space(s) for s in spaces]
    full = [s for s in opened if coverage(s)[0] == 0]
    if len(full) == 1:
        return full[0]
    if not full:
        if len(opened) == 1:
            _require_rows(opened[0], dataset, coverage)
        listing = "; ".join(describe(s) for s in opened)
        raise UsageError(f"no feature space of cache {store.root} holds every row of data set {dataset!r} (spaces: "
                         f"{listing}); run te extract on that data set, or choose one with --space")
    listing = "; ".join(describe(s) for s in full)
    raise UsageError(f"{len(full)} feature spaces hold data set {dataset!r} ({listing}); choose one with --space ID"
                     f"{'' if backbone else ' or --backbone NAME'}")


def describe(space: "CachedSpace") -> str:
    """A space in a few words: id prefix, backbone, stored dtype, compute precision."""
    c = space.config
    return f"{space.id[:12]} {c.backbone} {c.stored} {c.precision}"


def _require_rows(space: "CachedSpace", dataset: str, coverage: Coverage) -> None:
    missing, wanted = coverage(space)
    if missing:
        raise UsageError(f"space {space.id[:12]} ({space.config.backbone}) lacks {missing} of the {wanted} "
                         f"rows of data set {dataset!r}; run te extract for it again (it adds only what is missing)")
