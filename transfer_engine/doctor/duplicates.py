"""Exact duplicates: records of one content key (the same bytes), found from the cache's records alone.

A key in two splits is a leak (the held-out copy is an image the model was fitted on); a key filed under
two labels is a conflict (at most one of them is right). Copies within one split under one label are
harmless to the figures but counted: they weigh one picture twice. The splits rank train < val < test: a
copy in a later split than another copy is the leaked one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from transfer_engine.doctor.rows import SPLITS, Rows


@dataclass
class ExactGroup:
    """The records of one key that has more than one record (positions into `Rows`' records)."""

    records: list[int]
    cross_split: bool
    conflicting: bool


def exact_groups(rows: Rows) -> list[ExactGroup]:
    """Every key with two or more records, largest group first, then in data-set order."""
    order = np.argsort(rows.record_key, kind="stable")
    keys = rows.record_key[order]
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    ends = np.r_[starts[1:], len(keys)]
    groups = []
    for s, e in zip(starts, ends):
        if e - s < 2:
            continue
        members = sorted(order[s:e].tolist())
        groups.append(ExactGroup(members, len(set(rows.splits[members])) > 1, len(set(rows.labels[members])) > 1))
    groups.sort(key=lambda g: (-len(g.records), g.records[0]))
    return groups


def leaked_by_copy(rows: Rows, groups: list[ExactGroup]) -> dict[int, int]:
    """{held-out record: the record in an earlier split with the same bytes} (val from train, test from train
    or val)."""
    rank = {s: i for i, s in enumerate(SPLITS)}
    leaked: dict[int, int] = {}
    for g in groups:
        if not g.cross_split:
            continue
        first = min(g.records, key=lambda r: (rank[rows.splits[r]], r))
        for r in g.records:
            if rank[rows.splits[r]] > rank[rows.splits[first]]:
                leaked[r] = first
    return leaked
