"""`doctor()`: read a cached data set once and report what is wrong with it, from its features alone."""

from __future__ import annotations

import os
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transfer_engine.core.configs import DoctorConfig
from transfer_engine.core.format import percent, points
from transfer_engine.core.progress import Progress, Say, say_of
from transfer_engine.doctor import duplicates, impact, label_issues, near_duplicates, neighbours, outliers
from transfer_engine.doctor.rows import Rows, load_rows, signature_of


@dataclass
class Diagnosis:
    """What `doctor()` found; `to_dict()` is doctor.json (and `te doctor --json`).

    Attributes:
        config: what was asked.
        rows: the records and features examined.
        exact: the groups of records with the same bytes.
        leaked_exact: {held-out record: earlier record with the same bytes}.
        pairs: near-duplicate pairs of distinct images; kinds: each pair's "train-test", "within train", ...
        leaked_near: {held-out record: (earlier record it nearly duplicates, cosine)}.
        labels: the probe's out-of-fold judgement and cleanlab's flags.
        outliers: the outlier scores and flags.
        balance: records per class and split.
        impact: test accuracy with and without the leaked test images (None without a test split).
        impact_head: which head was judged.
        method: how the neighbours were found.
        rule: how near duplicates were judged: {"by": "signature", "space", "signature_threshold", "floor"} or
            {"by": "features", "threshold", "why"} (why the signature was not used).
        files: what was written ({"md", "json", sheet names..., "manifest"}).
        manifest: what the manifest holds (None when none was asked for).
        seconds: wall time.
    """

    config: DoctorConfig
    rows: Rows
    exact: list[duplicates.ExactGroup]
    leaked_exact: dict[int, int]
    pairs: list[near_duplicates.NearPair]
    kinds: list[str]
    leaked_near: dict[int, tuple[int, float]]
    labels: label_issues.LabelIssues
    outliers: outliers.Outliers
    balance: dict[str, Any]
    impact: dict[str, Any] | None
    impact_head: str
    method: str
    rule: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    manifest: dict[str, Any] | None = None
    seconds: float = 0.0

    @property
    def leaked(self) -> set[int]:
        """Held-out records that copy (exactly or nearly) a record of an earlier split."""
        return set(self.leaked_exact) | set(self.leaked_near)

    def label_error_records(self) -> list[int]:
        """Records (positions into rows) flagged as likely label errors, most likely first."""
        return self.labels.pool[self.labels.flagged].tolist()

    def to_dict(self) -> dict[str, Any]:
        from transfer_engine.doctor.report import as_dict

        return as_dict(self)


def doctor(cache: "str | os.PathLike | DoctorConfig", *, progress: Progress = True, **fields: Any) -> Diagnosis:
    """Examine a cached data set: duplicates, near duplicates across splits, likely label errors, outliers,
    class balance, and what the leaked test images do to test accuracy; write doctor.md, doctor.json and
    contact sheets to the config's `out`, and the manifest when asked.

    Args:
        cache: the cache directory, or a whole `DoctorConfig` (then `fields` change it).
        progress: lines for the user: True on stderr, False or None none, a function is handed each.
        fields: `DoctorConfig` fields (dataset, backbone, space, out, threshold, signature,
            signature_threshold, signature_floor, probe, folds, run, write_manifest, leaked, drop_label_errors,
            top, sheets, seed).

    Returns:
        The `Diagnosis`.

    Raises:
        UsageError: no such cache, data set or space; cleanlab (or, above the exact search's size, FAISS)
            not installed; a --run of another space or other classes.
    """
    config = DoctorConfig.of(cache, **fields) if isinstance(cache, DoctorConfig) else DoctorConfig(cache=cache, **fields)
    say = say_of(progress)
    start = time.perf_counter()
    label_issues.require_cleanlab()
    _check_early(config)
    rows = load_rows(config.cache, dataset=config.dataset, backbone=config.backbone, space=config.space, say=say)
    try:  # the features are read from the cache as they are used: it stays open until the findings are in
        diagnosis = _diagnose(config, rows, say)
    finally:
        rows.close()
    from transfer_engine.doctor import report

    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    if config.write_manifest is not None:
        from transfer_engine.doctor.manifest import write_manifest

        diagnosis.manifest = write_manifest(diagnosis, Path(config.write_manifest))
        diagnosis.files["manifest"] = str(config.write_manifest)
    if config.sheets:
        from transfer_engine.doctor.sheets import draw_sheets

        diagnosis.files.update(draw_sheets(diagnosis, out, say))
    diagnosis.seconds = time.perf_counter() - start
    report.write(diagnosis, out)
    return diagnosis


def _diagnose(config: DoctorConfig, rows: Rows, say: Say) -> Diagnosis:
    """Every finding on the rows (nothing written yet)."""
    groups = duplicates.exact_groups(rows)
    leaked_exact = duplicates.leaked_by_copy(rows, groups)
    found = neighbours.nearest(rows.features)
    say(f"doctor: nearest neighbours of {len(rows.keys)} images ({found.method})")
    pairs, rule = _near_pairs(config, rows, found, say)
    image_splits = near_duplicates.splits_of_images(rows)
    kinds = [near_duplicates.pair_kind(image_splits[p.a], image_splits[p.b]) for p in pairs]
    leaked_near = near_duplicates.leaked_by_near_copy(rows, pairs)
    say(f"doctor: probe ({config.probe}, {config.folds}-fold over train+val) for the label errors")
    labels = label_issues.find_label_issues(rows, head=config.probe, folds=config.folds, seed=config.seed,
                                            neighbours=found)
    outlying = outliers.find_outliers(found)
    balance = outliers.class_balance(rows)
    diagnosis = Diagnosis(config, rows, groups, leaked_exact, pairs, kinds, leaked_near, labels, outlying, balance,
                          None, "", found.method, rule)
    if len(labels.test):
        if config.run is not None:
            predicted, head = impact.run_predictions(config.run, rows, labels.test)
        else:
            predicted = labels.test_probabilities.argmax(1)
            head = f"te doctor's probe ({config.probe} head fitted on train+val)"
        diagnosis.impact = impact.accuracy_with_and_without(rows, labels.test, predicted, diagnosis.leaked)
        diagnosis.impact_head = head
    return diagnosis


def _near_pairs(config: DoctorConfig, rows: Rows, found: neighbours.Neighbours, say
                ) -> tuple[list[near_duplicates.NearPair], dict[str, Any]]:
    """The near-duplicate pairs by the sharpest evidence cached: the copy thumbnails lined up, else the copy
    signature, else the features' cosine alone; and the rule used."""
    from transfer_engine.backbones.signature import THUMBNAIL_NAME
    from transfer_engine.doctor.aligned import signature_from_thumbnails

    if not config.signature:
        return (near_duplicates.near_pairs(found, config.threshold),
                {"by": "features", "threshold": config.threshold, "why": "--no-signature"})
    thumbnails, found_thumbnails = (signature_of(config.cache, rows, THUMBNAIL_NAME) if config.aligned
                                    else (None, "--no-aligned"))
    if thumbnails is not None:
        say(f"doctor: near duplicates confirmed by lining up the copy thumbnails ({found_thumbnails})")
        try:
            by_thumbnail = neighbours.nearest(signature_from_thumbnails(thumbnails.features))
            pairs = near_duplicates.aligned_pairs([found, by_thumbnail], rows.features, thumbnails.features,
                                                  config.aligned_threshold, config.aligned_floor)
        finally:
            thumbnails.close()
        return pairs, {"by": "aligned", "space": thumbnails.space_id, "aligned_threshold": config.aligned_threshold,
                       "floor": config.aligned_floor}
    signature, why = signature_of(config.cache, rows)
    if signature is None:
        return (near_duplicates.near_pairs(found, config.threshold),
                {"by": "features", "threshold": config.threshold, "why": f"{found_thumbnails}; {why}"})
    say(f"doctor: near duplicates confirmed by the copy signature ({why})")
    try:
        pairs = near_duplicates.signature_pairs(found, neighbours.nearest(signature.features), rows.features,
                                                signature.features, config.signature_threshold, config.signature_floor)
    finally:
        signature.close()
    return pairs, {"by": "signature", "space": signature.space_id, "signature_threshold": config.signature_threshold,
                   "floor": config.signature_floor, "why": found_thumbnails}


def rule_text(rule: dict[str, Any]) -> str:
    """The near-duplicate rule in a few words, for the summary and doctor.md's heading."""
    if rule["by"] == "aligned":
        return f"copy thumbnails aligned >= {rule['aligned_threshold']:g}, features >= {rule['floor']:g}"
    if rule["by"] == "signature":
        return f"copy signature cosine >= {rule['signature_threshold']:g}, features >= {rule['floor']:g}"
    return f"cosine >= {rule['threshold']:g}"


def _check_early(config: DoctorConfig) -> None:
    """What can be refused before any work: an unknown probe, a --run that is not a run."""
    from transfer_engine.heads import get_head_spec
    from transfer_engine.runs import Run

    get_head_spec(config.probe)
    if config.run is not None:
        Run.open(config.run)


def signature_command(d: Diagnosis) -> str:
    """The te extract command that caches the copy thumbnails of the examined data set."""
    from transfer_engine.backbones.signature import THUMBNAIL_NAME

    data = shlex.quote(d.rows.data) if d.rows.data is not None else "SRC"
    return (f"te extract --backbone {THUMBNAIL_NAME} --data {data} --cache {shlex.quote(d.config.cache)} "
            f"--name {shlex.quote(d.rows.dataset)}")


def summary_lines(d: Diagnosis) -> list[str]:
    """The findings in a few sentences (what te doctor prints and te demo reports)."""
    from transfer_engine.backbones.signature import NAME as SIGNATURE
    from transfer_engine.backbones.signature import THUMBNAIL_NAME

    rows = d.rows
    lines = []
    held = {s: sum(1 for r in d.leaked_exact if rows.splits[r] == s) for s in ("val", "test")}
    conflicting = sum(1 for g in d.exact if g.conflicting)
    copies = sum(len(g.records) - 1 for g in d.exact)
    lines.append(f"exact duplicates: {copies} extra cop{'y' if copies == 1 else 'ies'} of {len(d.exact)} image(s); "
                 f"{held['test']} test and {held['val']} val image(s) are copies of earlier-split images; "
                 f"{conflicting} image(s) filed under conflicting labels")
    cross = [k for k in d.kinds if not k.startswith("within")]
    by_kind = {k: cross.count(k) for k in ("train-test", "train-val", "val-test") if cross.count(k)}
    near_held = {s: sum(1 for r in d.leaked_near if rows.splits[r] == s and r not in d.leaked_exact)
                 for s in ("val", "test")}
    lines.append(f"near duplicates ({rule_text(d.rule)}): {len(cross)} pair(s) across splits"
                 + (f" ({', '.join(f'{k} {n}' for k, n in by_kind.items())})" if by_kind else "")
                 + f", {len(d.kinds) - len(cross)} within a split; {near_held['test']} test and {near_held['val']} "
                 "val image(s) nearly copy an earlier-split image")
    # the hint, unless the user turned the thumbnails (or every copy backbone) off
    if (d.rule["by"] != "aligned" and d.config.signature and d.config.aligned
            and d.rows.backbone not in (SIGNATURE, THUMBNAIL_NAME)):
        lines.append(f"lining up the copy thumbnails finds cropped copies and tells copies from look-alikes "
                     f"({d.rule['why']}): {signature_command(d)}, then te doctor again (docs/doctor.md says where "
                     "it errs)")
    lab = d.labels
    lines.append(f"likely label errors: {len(lab.flagged)} of {len(lab.pool)} train+val images (probe: "
                 f"{d.config.probe} head, {d.config.folds}-fold accuracy {percent(lab.accuracy)}"
                 + (f", with the labels of each image's nearest {lab.neighbours}" if lab.neighbours else "")
                 + "; cleanlab's confident learning)")
    lines.append(f"outliers: {len(d.outliers.flagged)} image(s) far from every other (beyond the fence "
                 f"{d.outliers.fence:.3f} of 1 - mean cosine to the nearest {neighbours.NEIGHBOURS})")
    ratio = d.balance["train_ratio"]
    missing = d.balance["missing"]
    lines.append("class balance: train's largest class holds "
                 + (f"{ratio:.1f} times the smallest's images" if ratio is not None else "n/a")
                 + ("; " + "; ".join(f"{s} lacks {', '.join(c)}" for s, c in missing.items()) if missing else ""))
    if d.impact is not None:
        every, clean = d.impact["all"], d.impact["without_leaked"]
        tail = (f", {percent(clean['accuracy'])} on the {clean['images']} that are not copies "
                f"({points(clean['accuracy'] - every['accuracy'])})" if clean and d.impact["leaked"] else
                (", no test image is a copy" if not d.impact["leaked"] else ", every test image is a copy"))
        lines.append(f"test accuracy of {d.impact_head}: {percent(every['accuracy'])} on all {every['images']} test "
                     f"images{tail}")
    if d.manifest is not None:
        m = d.manifest
        lines.append(f"manifest {d.files['manifest']}: {m['rows']} image(s) ({m['dropped']} left out, {m['moved']} "
                     f"moved to train); te extract --data {d.files['manifest']} reuses every row from the cache")
    return lines
