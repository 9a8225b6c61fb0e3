"""The run of `te compare` (`compare()`): which backbone for this data? For each candidate in turn, its
features once into the shared cache (te extract), then a score without training (LogME), te train's linear
probe (with its sweep) and a k-NN probe on the cached features, and what the backbone costs to run
(`costs.measure`); then one leaderboard. The probes choose and rank by te train's selection rule
(`core.selection`: k-fold cross-validation over train+val on small data, the val split otherwise); the
order and what is recommended follow from it (`ranking`); `report` says and writes the result.

What a re-run costs: extraction reuses every row the cache has (te extract's rule), and the probes of a
backbone whose space and data set are unchanged are taken from the previous `compare.json` in --out
(said in its row), so adding a backbone costs that backbone's extraction and fits only.
"""

from __future__ import annotations

import json
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

from transfer_engine.compare import costs
from transfer_engine.compare.logme import logme
from transfer_engine.compare.ranking import rank, ranked_by, recommend, selected_by
from transfer_engine.compare.report import COMPARE_JSON, progress_line, write
from transfer_engine.compare.results import Comparison, Entry
from transfer_engine.core.configs import CompareConfig
from transfer_engine.core.progress import Progress, say_of
from transfer_engine.core.selection import resolve_selection
from transfer_engine.errors import TEError, UsageError, first_line

PROBES = ("linear", "knn")


def resolve_backbones(spec: str) -> list[str]:
    """The backbone names of `--backbones`: comma-separated names and shell patterns ("resnet*"), each
    checked before any work (an unknown name is the registry's one-line error, with its suggestion)."""
    from transfer_engine.backbones import get_backbone_spec, list_backbones

    names: list[str] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        if any(c in part for c in "*?["):
            matched = [n for n in list_backbones() if fnmatch(n, part)]
            if not matched:
                raise UsageError(f"--backbones {part}: no installed backbone matches (te backbones lists them)")
            names += matched
        else:
            names.append(get_backbone_spec(part).name)
    names = list(dict.fromkeys(names))
    if not names:
        raise UsageError("--backbones names no backbone; give NAME[,NAME...] or a pattern such as 'resnet*'")
    return names


def compare(data: "str | CompareConfig", cache: str | Path | None = None, backbones: str | list[str] | None = None, *,
            progress: Progress = True, **fields: Any) -> Comparison:
    """Rank backbones for a data set's images, from features extracted once into a feature cache.

    Args:
        data: what `te extract --data` takes, or a whole `core.configs.CompareConfig`, whose fields' help
            describes every option: out (compare.json / .md / .png and the probes' runs), weights, name,
            quick, limit, backend, seed, int8, select, folds.
        cache: the feature cache shared by every backbone (created when missing), with `data` a source.
        backbones: names and shell patterns (a comma-separated string or a list), with `data` a source.
        progress: progress lines, te extract's too: True on stderr, False none, a function is handed each
            (`core.progress`).
        fields: the config's fields as keywords (they override those of a config given).

    Returns:
        The `Comparison` (also written to `out`).

    Raises:
        UsageError: an unknown backbone, bad data (before any work, for every backbone).
    """
    cfg = (CompareConfig.of(data, **fields) if isinstance(data, CompareConfig)
           else CompareConfig(data=data, cache=cache, backbones=backbones, **fields))
    from transfer_engine.extract import extract

    say = say_of(progress)
    names = resolve_backbones(cfg.backbones)  # the config joins a list with commas
    out = Path(cfg.out).expanduser().absolute()
    previous = _previous_entries(out)
    entries: list[Entry] = []
    dataset = cfg.name
    for i, backbone in enumerate(names, 1):
        say(f"compare [{i}/{len(names)}] {backbone}")
        entry = Entry(backbone, cfg.weights)
        try:
            summary = extract(backbone, cfg.data, cfg.cache, weights=cfg.weights, name=dataset, limit=cfg.limit, label_field=cfg.label_field,
                              backend=cfg.backend, seed=cfg.seed, progress=progress)
        except UsageError:
            raise  # the data or the cache is wrong: the same for every backbone
        except TEError as exc:
            entry.error = f"extract: {first_line(exc)}"
            entries.append(entry)
            say(f"compare: {backbone}: {entry.error}")
            continue
        dataset = summary.dataset
        entry.space, entry.weights = summary.space, summary.weights
        entry.extracted, entry.reused, entry.images = summary.extracted, summary.reused, summary.total
        entry.extract_images_per_second = summary.images_per_second if summary.extracted else None
        try:
            _score(entry, cfg.cache, dataset, cfg.quick, previous.get(_reuse_key(entry.space, entry.images)), out,
                   cfg.seed, cfg.select, cfg.folds)
            costs.measure(entry, backbone, cfg.weights, cfg.seed, cfg.data, cfg.cache, dataset, cfg.int8)
        except TEError as exc:
            entry.error = first_line(exc)
        entries.append(entry)
        say(progress_line(entry))
    ranked = rank(entries)
    basis = selected_by(ranked, cfg.quick)
    result = Comparison(dataset or "", cfg.data, str(Path(cfg.cache).expanduser().absolute()),
                        ranked_by(basis, cfg.folds), ranked, recommend(ranked, basis), basis)
    write(result, out)
    return result


def _reuse_key(space: str | None, images: int | None) -> str:
    """Probes are reused for the same space over the same number of images."""
    return f"{space}:{images}"


def _previous_entries(out: Path) -> dict[str, dict[str, Any]]:
    """{space:images: entry} of the compare.json already in `out` (probes are reused from it)."""
    try:
        old = json.loads((out / COMPARE_JSON).read_text())
        return {_reuse_key(e.get("space"), e.get("images")): e for e in old["entries"] if e.get("space") and not e.get("error")}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _score(entry: Entry, cache, dataset: str, quick: bool, old: dict[str, Any] | None, out: Path, seed: int,
           select: str, folds: int) -> None:
    """LogME on the train features; the linear and k-NN probes (or theirs from the last compare.json, when
    they were selected the same way)."""
    from transfer_engine.train import load_training_data, train

    data = load_training_data(cache, dataset=dataset, space=entry.space)
    try:
        entry.feature_dim = data.space.dim
        train_split = data.splits["train"]
        features = train_split.features if train_split.features is not None else data.space.gather(train_split.keys)
        entry.logme = logme(features, train_split.labels)
        kfold = resolve_selection(select, len(train_split) + len(data.splits["val"])) == "kfold"
    finally:
        data.close()
    if quick:
        return
    if old is not None and all(old.get(f"{p}_val") is not None and _same_selection(old.get(f"{p}_kfold"), kfold, folds)
                               for p in PROBES):
        for key in ("linear_val", "linear_test", "knn_val", "knn_test", "val_images", "runs", "linear_kfold",
                    "knn_kfold"):
            setattr(entry, key, old.get(key))
        entry.probes_reused = True
        return
    for probe in PROBES:
        run_dir = out / "runs" / f"{entry.backbone.replace('/', '_')}-{probe}"
        result = train(cache, head=probe, out=run_dir, dataset=dataset, space=entry.space, sweep=True, seed=seed,
                       select="kfold" if kfold else "val", folds=folds, overwrite=True, progress=False)
        setattr(entry, f"{probe}_val", result.metrics["val_accuracy"])
        setattr(entry, f"{probe}_test", result.metrics.get("test_accuracy"))
        setattr(entry, f"{probe}_kfold", result.metrics.get("kfold"))
        entry.val_images = result.metrics.get("samples", {}).get("val")
        entry.runs[probe] = str(run_dir)


def _same_selection(old_kfold: dict[str, Any] | None, kfold: bool, folds: int) -> bool:
    """Whether a probe of the last compare.json was selected as this run would select it."""
    return (old_kfold or {}).get("k") == folds if kfold else old_kfold is None
