"""`te cache info|verify|repair|gc|merge|export`: look inside a feature cache, check it, repair it, clean it up,
merge caches built apart, and export a data set's features for other tools."""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path

import click

from transfer_engine.cli._common import emit_json, json_option, overwrite_option, table
from transfer_engine.cli._options import options_from
from transfer_engine.core.configs import CacheExportConfig
from transfer_engine.errors import CorruptCacheError, TEError, UsageError


class CacheChangedError(TEError):
    """The cache kept changing while `te cache verify` read it (a gc or repair committed meanwhile): not
    damage, and nothing to repair; exit code 3, so scripts tell it from damage (1)."""

    exit_code = 3

cache_dir = click.argument("directory", metavar="DIR", type=click.Path(file_okay=True, dir_okay=True))


def _open(directory: str):
    # Never create: a mistyped DIR must be an error, not a new empty cache.
    from transfer_engine.cache import FeatureCache

    return FeatureCache.open(directory, create=False)


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


@click.group("cache")
def cache() -> None:
    """Inspect, verify, clean and export a feature cache (the DIR of `te extract --cache DIR`).

    \b
    Examples:
      te cache info features/
      te cache verify features/ --json
      te cache repair features/
      te cache gc features/ --dry-run
      te cache merge features/ laptop-features/ gpu-box-features/
      te cache export features/ --dataset digits --format npy --out digits-emb/ --faiss
    """


@cache.command("info")
@cache_dir
@json_option
def info(directory: str, as_json: bool) -> None:
    """Show the feature spaces (backbone, rows, bytes on disk) and data sets (counts per split and label)."""
    with _open(directory) as c:
        summary = c.info()
    if as_json:
        emit_json(summary)
        return
    click.echo(f"cache {summary['cache']}  ({_human(summary['bytes'])} on disk, format {summary['format_version']})")
    click.echo("")
    table([(s["id"][:12], s["backbone"], s["dim"], s["stored"], s["rows"], s["shards"], _human(s["bytes"]))
           for s in summary["spaces"]], ["space", "backbone", "dim", "stored", "rows", "shards", "on disk"])
    if not summary["spaces"]:
        click.echo("(no feature spaces)")
    click.echo("")
    table([(d["name"], d["records"], len(d["classes"]), " ".join(f"{k}={v}" for k, v in d["splits"].items()),
            " ".join(f"{s[:12]}={n}" for s, n in d["coverage"].items() if n))
           for d in summary["datasets"]], ["data set", "records", "classes", "splits", "rows per space"])
    if not summary["datasets"]:
        click.echo("(no data sets)")
    for d in summary["datasets"]:
        click.echo(f"\nlabels of {d['name']}: " + ", ".join(f"{k}={v}" for k, v in d["labels"].items()))
    if summary["artifacts"]:
        click.echo("")
        table([(a["name"], a["file"], _human(a["bytes"])) for a in summary["artifacts"]],
              ["artifact", "file", "on disk"])


@cache.command("verify")
@cache_dir
@json_option
def verify(directory: str, as_json: bool) -> None:
    """Recompute every checksum; exit 1 naming each damaged shard and its rows. Never repairs anything."""
    with _open(directory) as c:
        report = c.verify()
    if as_json:
        emit_json(report.to_dict())
    else:
        for problem in report.problems:
            click.echo(f"DAMAGED  {problem}")
        for note in report.notes:
            click.echo(f"note     {note}")
        if report.ok:
            click.echo(f"ok: {report.shards} shards, {report.rows} rows, {_human(report.bytes_checked)} checked")
    if report.changed and not report.problems:
        from transfer_engine.cache.verify import CHANGED

        raise CacheChangedError(f"{CHANGED} and kept changing, so it could not be checked whole; this is not "
                                f"damage: run te cache verify {report.cache} again once that has finished")
    if not report.ok:
        first = report.problems[0]
        more = f" (and {len(report.problems) - 1} more problems)" if len(report.problems) > 1 else ""
        way_out = (f"; `te cache repair {report.cache}` drops what is damaged so that te extract extracts it again"
                   if report.damage else "")
        raise CorruptCacheError(f"cache {report.cache} is damaged: {first}{more}{way_out}")


@cache.command("repair")
@cache_dir
@json_option
def repair(directory: str, as_json: bool) -> None:
    """Drop what `te cache verify` finds damaged, so the next `te extract` re-extracts exactly those images.

    Good rows are never touched. A damaged index.sqlite is kept beside the cache
    (index.sqlite.damaged-TIME) and rebuilt from the shards; what cannot be recovered is listed.
    Run it while no other te process uses the cache.
    """
    from transfer_engine.cache.repair import repair_cache

    report = repair_cache(directory)
    if as_json:
        emit_json(report.to_dict())
        return
    if report.rebuilt_index:
        click.echo(f"rebuilt the index from the shards: {report.spaces_restored} spaces, {report.rows_restored} rows, "
                   f"data sets {', '.join(report.datasets_restored) or 'none'} read back"
                   + (f"; the damaged index is kept as {report.damaged_copy}" if report.damaged_copy else ""))
    for item in report.dropped:
        first, last = item["rows"]
        click.echo(f"dropped  {item['shard']} rows {first}-{last}: {item['why']}")
    for item in report.artifacts_dropped:
        click.echo(f"dropped  artifact {item}; te exports it again when it next needs it")
    for item in report.lost:
        click.echo(f"lost     {item}")
    if not report.changed:
        click.echo("nothing to repair" + ("" if report.to_extract else f": cache {report.cache} verifies"))
    elif not report.rebuilt_index:
        click.echo(f"dropped {report.entries_dropped} index entries, rewrote {report.shards_rewritten} shards")
    for name, n in report.to_extract.items():
        click.echo(f"data set {name!r}: {n} images have no row now; `te extract --name {name}` on its data "
                   "extracts only those")


@cache.command("gc")
@cache_dir
@click.option("--dry-run", is_flag=True, help="Only report what would be dropped.")
@json_option
def gc(directory: str, dry_run: bool, as_json: bool) -> None:
    """Drop rows that no data set references, spaces left empty, and files of interrupted writers.

    A row is kept while any data set in the cache has an image with its key. Features appended
    through the Python API without a data set are dropped: look first with --dry-run.
    """
    with _open(directory) as c:
        report = c.gc(dry_run=dry_run)
    if as_json:
        emit_json(report.to_dict())
        return
    verb = "would drop" if dry_run else "dropped"
    click.echo(f"{verb} {report.rows_dropped} rows, {len(report.spaces_dropped)} spaces, "
               f"{report.shards_removed} shards (rewrote {report.shards_rewritten}), "
               f"{report.orphan_files} orphan files, {report.artifacts_removed} stale artifacts; "
               f"{'would free about' if dry_run else 'freed'} "
               f"{_human(report.bytes_freed)}")
    for space in report.spaces_dropped:
        click.echo(f"  space {space[:12]}")
    for space, pids in report.spaces_kept_for_writers.items():
        click.echo(f"  kept space {space[:12]} whole: a writer is still adding rows to it "
                   f"(pid {', '.join(map(str, pids))}); run gc again once it has finished")


@cache.command("merge")
@click.argument("dest", metavar="DEST", type=click.Path(file_okay=True, dir_okay=True))
@click.argument("sources", metavar="SRC...", nargs=-1, required=True, type=click.Path(file_okay=True, dir_okay=True))
@click.option("--rename", is_flag=True,
              help="A source data set whose name DEST uses for other records is stored as NAME-2, NAME-3, ...")
@click.option("--replace", is_flag=True,
              help="A source data set whose name DEST uses for other records replaces DEST's.")
@click.option("--dry-run", is_flag=True, help="Read and verify the sources; report what would be copied, write nothing.")
@json_option
def merge(dest: str, sources: tuple[str, ...], rename: bool, replace: bool, dry_run: bool, as_json: bool) -> None:
    """Copy into DEST the rows, data sets and artifacts of each SRC cache that DEST lacks.

    Rows are matched by content (same space, same key = same features), so nothing is copied twice and
    running it again after an interruption copies only the rest. Source rows are verified while read: a
    damaged one is reported and skipped, never copied. DEST is created when missing. A data set name that
    DEST already uses for other records is an error unless --rename or --replace is given. Every refusal
    comes before DEST is created; --dry-run never creates it.
    """
    from transfer_engine.cache import FeatureCache
    from transfer_engine.cache.merge import check_merge, merge_caches
    from transfer_engine.cache.store import MARKER

    if rename and replace:
        raise UsageError("--rename and --replace exclude each other: give one (rename keeps both data sets, "
                         "replace keeps the source's)")
    on_conflict = "rename" if rename else "replace" if replace else "error"
    opened = []
    stack = contextlib.ExitStack()
    try:
        for src in sources:
            opened.append(_open(src))
        exists = (Path(dest).expanduser() / MARKER).is_file()
        if exists:
            target = FeatureCache.open(dest, create=False)
        else:  # refusals first: a refused merge (or a dry run) leaves no DEST behind
            check_merge(dest, opened, on_conflict)
            if dry_run:  # compare with an empty cache
                scratch = tempfile.TemporaryDirectory(prefix="te-merge-dry-run-")
                stack.callback(scratch.cleanup)
                target = FeatureCache.open(Path(scratch.name) / "cache")
            else:
                target = FeatureCache.open(dest)
        opened.append(target)
        report = merge_caches(target, opened[:-1], on_conflict=on_conflict, dry_run=dry_run, progress=not as_json)
    finally:
        for c in opened:
            c.close()
        stack.close()
    report.dest = str(Path(dest).expanduser().absolute())
    if as_json:
        emit_json(report.to_dict())
        return
    for d in report.datasets:
        click.echo(f"data set {d.name!r} of {d.source}: {d.action} ({d.records} records)")
    for s in report.spaces:
        for problem in s.problems:
            click.echo(f"DAMAGED  {problem}")
    verb = "would copy" if dry_run else "copied"
    rate = report.bytes_copied / report.seconds / 1e6 if report.seconds > 0 else 0.0
    click.echo(f"{verb} {report.copied} rows ({_human(report.bytes_copied)}, {rate:.0f} MB/s), "
               f"{sum(s.reused for s in report.spaces)} already in DEST, {report.skipped} damaged rows skipped, "
               f"{report.artifacts_copied} artifacts, in {report.seconds:.1f} s")
    if report.skipped:  # like cp: everything else was copied, and the exit status says what was not
        refused = [d.name for d in report.datasets if d.action.startswith("not copied")]
        also = (f" nor data sets {', '.join(map(repr, refused))}, which name them (DEST stays verifiable)"
                if refused else " (everything else was)")
        raise CorruptCacheError(f"{report.skipped} damaged source rows were not copied{also}; `te cache verify` on "
                                "the source names them, `te extract` into DEST extracts those images again")


@cache.command("export")
@click.argument("cache_dir", metavar="CACHE", type=click.Path(file_okay=True, dir_okay=True))
@click.option("--out", required=True, type=click.Path(path_type=Path), metavar="DIR",
              help="The export folder: new, empty, or an earlier export (with --overwrite).")
@options_from(CacheExportConfig)
@overwrite_option
@json_option
def export(cache_dir: str, out: Path, overwrite: bool, as_json: bool, **fields) -> None:
    """Write a data set's cached features as .npy or parquet files (and a FAISS index) for other tools.

    Rows are the data set's records in order, with their content key, origin (path), label, class and
    split: --format npy writes DIR/emb/embeddings_NNNNN.npy and DIR/metadata/metadata_NNNNN.parquet with
    the same numbering (embedding-reader's parquet_npy layout); --format parquet writes
    DIR/embeddings_NNNNN.parquet with an 'embedding' column. --dtype int8 writes a space's stored codes
    and their per-row scales (DIR/scales/scales_NNNNN.npy, or a 'scale' column). DIR/export.json, written
    last, says what was written. --faiss adds DIR/index.faiss over the L2-normalized rows: IndexFlatIP up
    to --faiss-flat-rows rows, IndexIVFFlat above. The space is chosen as te train chooses it.

    \b
    Examples:
      te cache export features/ --dataset digits --format npy --out digits-emb/
      te cache export features/ --dataset digits --split test --format parquet --out digits-test/
      te cache export features/ --backbone resnet50 --format npy --dtype int8 --out emb-int8/ --faiss
    """
    from transfer_engine.cache.export import export_features

    summary = export_features(cache_dir, CacheExportConfig(**fields), out=out, overwrite=overwrite, progress=True)
    if as_json:
        emit_json(summary.to_dict())
        return
    split = f", split {summary.split}" if summary.split else ""
    click.echo(f"exported {summary.rows} rows ({summary.dim}-d {summary.dtype}{', normalized' if summary.normalized else ''}) "
               f"of data set {summary.dataset}{split}, space {summary.space[:12]} ({summary.backbone}), to {summary.out}")
    for role, files in summary.files.items():
        click.echo(f"  {role:10} {files[0]}" + (f" ... {files[-1]} ({len(files)} files)" if len(files) > 1 else ""))
    if summary.faiss:
        click.echo(f"  {'faiss':10} {summary.faiss['file']} ({summary.faiss['type']}, {summary.faiss['rows']} rows)")
