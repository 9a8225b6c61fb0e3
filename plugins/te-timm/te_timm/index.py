"""The index of timm's models that makes listing them cheap: names, feature sizes, pretrained tags and
their preprocessing, per timm version, without building a model or importing timm.

Why an index: te loads every plugin's specs whenever it needs any backbone name, so this plugin's entry
point must answer in milliseconds, and `BackboneSpec.feature_dim` must be known before a model exists.
timm cannot say a model's feature size without constructing it, and constructing all ~1,400 models
takes minutes even on PyTorch's meta device (no memory, no compute). So the index is computed once per
timm version and read as JSON afterwards:

- the index of the timm version this plugin was tested with ships inside the package
  (`te_timm/data/timm-<version>.json.gz`, made by `python -m te_timm.index`);
- with any other timm version installed, the first listing builds that version's index from the
  installed timm and stores it in the user cache (`$XDG_CACHE_HOME/te-timm`, default `~/.cache/te-timm`).
  Feature sizes of names the shipped index knows are carried over (timm never changes the architecture
  behind a published name: its pretrained weights would stop loading); only new names are built on
  the meta device, a fraction of a second each.

How a feature size is found: the model is built with `num_classes=0` (timm's pooled pre-logits
features, what te extracts) on the meta device and run on a meta tensor of its default input size; the
output width is the feature size. Where a model cannot run on the meta device, its `head_hidden_size`
(what timm's classifier reads) is used and the entry says so. Models whose `num_classes=0` output is not
a [N, D] vector are left out, with the reason, under "excluded".

Preprocessing comes from each tag's `pretrained_cfg`, mapped to te's `PreprocessSpec` exactly as timm's
own eval transform does it: resize the shorter side to floor(input / crop_pct), center-crop the input
size. Tags timm prepares differently (crop_mode "squash" or "border", non-square inputs, crop_pct > 1)
are listed under "unsupported" with the reason: te would feed those weights other pixels than timm does.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import sys
import tempfile
import time
from importlib import metadata, resources
from pathlib import Path
from typing import Any, Callable, Iterable

FORMAT = 1
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
DEFAULT_CROP_PCT = 0.875  # timm's default when a cfg leaves crop_pct unset


def timm_version() -> str:
    """The installed timm's version, read from its metadata (timm itself is not imported)."""
    return metadata.version("timm")


def user_cache_dir() -> Path:
    """Where indexes of timm versions other than the shipped one are kept."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "te-timm"


def index_file_name(version: str) -> str:
    """The file name of the index of timm `version`."""
    return f"timm-{version}.json.gz"


def _read(path: Any) -> dict[str, Any]:
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        return json.load(fh)


def read_shipped() -> dict[str, Any]:
    """The index shipped with this package: the one file in te_timm/data, for the timm version tested."""
    shipped = [f for f in (resources.files("te_timm") / "data").iterdir() if f.name.endswith(".json.gz")]
    if len(shipped) != 1:
        raise RuntimeError(f"te-timm is damaged: expected one index in te_timm/data, found {len(shipped)}; reinstall it")
    return _read(shipped[0])


def load_index(version: str | None = None) -> dict[str, Any]:
    """The index for the installed timm (or `version`), building and caching it when needed.

    Args:
        version: the timm version to index; default: the installed one.

    Returns:
        The index: {"format", "timm_version", "models": {arch: entry}, "excluded": {arch: reason}}.
    """
    version = version or timm_version()
    shipped = read_shipped()
    if version == shipped["timm_version"]:
        return shipped
    cached = user_cache_dir() / index_file_name(version)
    if cached.is_file():
        try:
            index = _read(cached)
            if index.get("format") == FORMAT and index.get("timm_version") == version:
                return index
        except (OSError, ValueError, EOFError):
            pass  # a damaged cache file is rebuilt below
    known = {arch: (entry["feature_dim"], f"carried over from timm {shipped['timm_version']}")
             for arch, entry in shipped["models"].items()}
    print(f"te-timm: indexing the models of timm {version} once (te-timm ships the index of timm "
          f"{shipped['timm_version']}); it goes to {cached}", file=sys.stderr)
    index = build_index(known_dims=known, known_excluded=shipped["excluded"], progress=_stderr_progress)
    index["timm_version"] = version
    write_index(index, cached)
    return index


def write_index(index: dict[str, Any], path: Path) -> None:
    """Write an index atomically (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as fh:
            fh.write(json.dumps(index, sort_keys=True, separators=(",", ":")).encode())
        os.chmod(tmp, 0o644)  # mkstemp makes it private; an index is not a secret (and ships in wheels)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def preprocess_of(cfg: dict[str, Any]) -> tuple[list[Any] | None, str | None]:
    """te's preprocessing fields for one timm pretrained cfg, or the reason te cannot match timm.

    Args:
        cfg: a timm `PretrainedCfg` as a dict.

    Returns:
        ([crop_size, resize_size, interpolation, mean, std], None) or (None, reason).
    """
    channels, height, width = cfg.get("input_size") or (3, 224, 224)
    crop_pct = cfg.get("crop_pct") or DEFAULT_CROP_PCT
    interpolation = cfg.get("interpolation") or "bilinear"
    mode = cfg.get("crop_mode") or "center"
    if mode != "center":
        return None, f"crop_mode {mode!r} (te resizes the shorter side and center-crops)"
    if height != width:
        return None, f"non-square input {height}x{width}"
    if channels != 3:
        return None, f"{channels}-channel input"
    if crop_pct > 1:
        return None, f"crop_pct {crop_pct} > 1 (the crop is larger than the resized image)"
    if interpolation not in INTERPOLATIONS:
        return None, f"interpolation {interpolation!r}"
    # timm's eval transform: scale_size = floor(img_size / crop_pct), Resize(shorter side), CenterCrop.
    resize = math.floor(height / crop_pct)
    return [height, resize, interpolation, list(cfg["mean"]), list(cfg["std"])], None


def _approximate(cfg: dict[str, Any]) -> list[Any]:
    """Center-crop preprocessing closest to a cfg te cannot match (used for random init only)."""
    size = min(cfg.get("input_size", (3, 224, 224))[1:])
    crop_pct = min(cfg.get("crop_pct") or DEFAULT_CROP_PCT, 1.0)
    interpolation = cfg.get("interpolation") if cfg.get("interpolation") in INTERPOLATIONS else "bicubic"
    return [size, math.floor(size / crop_pct), interpolation, list(cfg["mean"])[:3], list(cfg["std"])[:3]]


def feature_dim_on_meta(arch: str, input_size: Iterable[int]) -> tuple[int | None, str]:
    """The pooled feature size of `arch`, measured on the meta device (no memory, no compute).

    Returns:
        (dim, how): how is "meta-forward" or "head_hidden_size"; (None, reason) when the model's
        `num_classes=0` output is not a [N, D] vector.
    """
    import timm
    import torch

    with torch.device("meta"):
        model = timm.create_model(arch, pretrained=False, num_classes=0).eval()
    try:
        with torch.no_grad():
            out = model(torch.empty(1, *input_size, device="meta"))
    except Exception:  # data-dependent ops cannot run on meta: fall back to what feeds the classifier
        dim = getattr(model, "head_hidden_size", None) or getattr(model, "num_features", None)
        return (int(dim), "head_hidden_size") if dim else (None, "no pooled output width could be found")
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        shape = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        return None, f"its num_classes=0 output is {shape}, not pooled features [N, D]"
    return int(out.shape[1]), "meta-forward"


def arch_entry(arch: str, known_dim: tuple[int, str] | None = None) -> tuple[dict[str, Any] | None, str | None]:
    """One model's index entry: feature size, classifier, tags and their preprocessing.

    Args:
        arch: a timm architecture name (`timm.list_models()`).
        known_dim: (feature size, how it was found) when already known (skips the meta-device build).

    Returns:
        (entry, None), or (None, reason) when the model is excluded.
    """
    from timm.models import get_arch_pretrained_cfgs, get_pretrained_cfg

    default = get_pretrained_cfg(arch).to_dict()
    cfgs = {key.split(".", 1)[1] if "." in key else "": cfg.to_dict()
            for key, cfg in get_arch_pretrained_cfgs(arch).items()}
    if known_dim is not None:
        dim, how = known_dim
    else:
        try:
            dim, how = feature_dim_on_meta(arch, default.get("input_size") or (3, 224, 224))
        except Exception as exc:  # a model timm cannot construct here is left out, with the reason
            return None, f"cannot be built: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    if dim is None:
        return None, how
    weights: list[list[Any]] = []
    unsupported: dict[str, str] = {}
    for tag, cfg in cfgs.items():
        if not tag or not (cfg.get("hf_hub_id") or cfg.get("url") or cfg.get("file")):
            continue  # a cfg without a weights source: the architecture's defaults, not weights
        pre, reason = preprocess_of(cfg)
        if pre is None:
            unsupported[tag] = reason or ""
        elif tag == default.get("tag"):
            weights.insert(0, [tag, pre])  # timm's default tag first: te's default weights
        else:
            weights.append([tag, pre])
    random_pre, _ = preprocess_of(default)
    classifier = default.get("classifier") or []
    return {
        "feature_dim": dim,
        "feature_dim_from": how,
        "classifier": [classifier] if isinstance(classifier, str) else list(classifier),
        "weights": weights,  # [[tag, preprocessing], ...] in timm's order: the first is timm's default
        "unsupported": unsupported,
        "random_preprocess": random_pre or _approximate(default),
    }, None


def build_index(names: Iterable[str] | None = None, known_dims: dict[str, tuple[int, str]] | None = None,
                known_excluded: dict[str, str] | None = None,
                progress: Callable[[int, int, str], None] | None = None) -> dict[str, Any]:
    """Index the installed timm's models.

    Args:
        names: the architectures to index (default: all of `timm.list_models()`).
        known_dims: {arch: (feature size, how it was found)} already known (those are not built).
        known_excluded: models already known to be excluded, with the reason (not built either).
        progress: called as progress(done, total, arch) after each model.

    Returns:
        The index (see `load_index`).
    """
    import timm

    names = sorted(names) if names is not None else timm.list_models()
    known_dims = known_dims or {}
    known_excluded = known_excluded or {}
    models: dict[str, Any] = {}
    excluded: dict[str, str] = {}
    for i, arch in enumerate(names, 1):
        if arch in known_excluded:
            entry, reason = None, known_excluded[arch]
        else:
            entry, reason = arch_entry(arch, known_dims.get(arch))
        if entry is None:
            excluded[arch] = reason or "excluded"
        else:
            models[arch] = entry
        if progress:
            progress(i, len(names), arch)
    return {"format": FORMAT, "timm_version": timm.__version__, "models": models, "excluded": excluded}


def _stderr_progress(done: int, total: int, arch: str) -> None:
    if done == total or done % 50 == 0:
        print(f"te-timm: indexed {done}/{total} models ({arch})", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    """`python -m te_timm.index [OUT] [--reuse-dims INDEX]`: (re)build the index of the installed timm.

    Without OUT it writes te_timm/data/timm-<version>.json.gz next to this module (what ships).
    """
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("out", nargs="?", help="where to write the index (.json.gz)")
    parser.add_argument("--reuse-dims", metavar="INDEX", help="take feature sizes and exclusions from this "
                        "index of the same timm version instead of measuring them again (after a change to how "
                        "tags are indexed: minutes become seconds)")
    args = parser.parse_args(argv)
    version = timm_version()
    out = Path(args.out) if args.out else Path(__file__).parent / "data" / index_file_name(version)
    known, excluded = None, None
    if args.reuse_dims:
        old = _read(args.reuse_dims)
        if old.get("timm_version") != version:
            parser.error(f"{args.reuse_dims} indexes timm {old.get('timm_version')}, not the installed {version}")
        known = {a: (e["feature_dim"], e["feature_dim_from"]) for a, e in old["models"].items()}
        excluded = old["excluded"]
    start = time.perf_counter()
    index = build_index(known_dims=known, known_excluded=excluded, progress=_stderr_progress)
    write_index(index, out)
    print(f"wrote {out}: {len(index['models'])} models, {len(index['excluded'])} excluded, "
          f"{time.perf_counter() - start:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
