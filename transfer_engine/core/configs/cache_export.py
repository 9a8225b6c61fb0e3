"""`te cache export`'s config: which rows of a cached data set to write, in which layout and dtype (the cache
and --out are its arguments)."""

from __future__ import annotations

from dataclasses import dataclass

from transfer_engine.core.choices import FEATURE_EXPORT_DTYPES, FEATURE_EXPORT_FORMATS
from transfer_engine.core.configs import shared
from transfer_engine.core.configs.base import Config
from transfer_engine.core.options import option
from transfer_engine.errors import UsageError

# Rows per file: embedding-reader and autofaiss read a folder of files one by one, and a file of this many
# rows of a 2048-d float32 backbone is under a GiB.
DEFAULT_ROWS_PER_FILE = 100_000
# --faiss: an exact (flat) index up to this many rows; an IVF index above, whose search looks at a few
# lists instead of every row (cache/export.py says how it is built).
DEFAULT_FAISS_FLAT_ROWS = 100_000
# Rows read from the cache and written at once: what the export holds in memory (times dim x 4 bytes).
DEFAULT_CHUNK_ROWS = 8192


@dataclass(frozen=True)
class CacheExportConfig(Config):
    """What `te cache export` is asked to write; `te cache export --help` says what each field means."""

    format: str = option(choices=FEATURE_EXPORT_FORMATS, required=True,
                         help="npy: emb/embeddings_NNNNN.npy + metadata/metadata_NNNNN.parquet (row i of one is row "
                              "i of the other); parquet: embeddings_NNNNN.parquet, the metadata columns and an "
                              "'embedding' column.")
    dataset: str | None = shared.cached_dataset()
    split: str | None = option(None, metavar="SPLIT", help="Only the records of this split (default: all of them; "
                                                          "the split column says which is which).")
    backbone: str | None = shared.feature_backbone()
    space: str | None = shared.feature_space()
    dtype: str = option(FEATURE_EXPORT_DTYPES[0], choices=FEATURE_EXPORT_DTYPES,
                        help="float32: the rows as te's loader decodes them; int8: a space's stored int8 codes with "
                             "one float32 scale per row (row = codes x scale), only from a space stored as int8.")
    normalize: bool = option(False, help="L2-normalize each float32 row before it is written (export.json says "
                                         "whether rows are).")
    rows_per_file: int = option(DEFAULT_ROWS_PER_FILE, low=1, metavar="N",
                                help="At most N rows per file; files are numbered from 00000 in row order.")
    faiss: bool = option(False, help="Also write index.faiss: inner product on L2-normalized rows, ids = row "
                                     "numbers (needs faiss-cpu).")
    faiss_flat_rows: int = option(DEFAULT_FAISS_FLAT_ROWS, low=1, metavar="N",
                                  help="With --faiss: an exact IndexFlatIP up to N rows; above, an IndexIVFFlat of "
                                       "about sqrt(rows) lists trained on a sample of the rows.")
    chunk_rows: int = option(DEFAULT_CHUNK_ROWS, low=1, metavar="N", changes_run=False, cli=False,
                             help="Rows read from the cache and written at once.")

    def __post_init__(self) -> None:
        if self.normalize and self.dtype == "int8":
            raise UsageError("--normalize changes the rows, --dtype int8 writes them as stored: give one of them")
        self.check()
