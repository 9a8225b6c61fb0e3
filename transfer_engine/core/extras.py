"""How to install the optional packages some commands use, said once (the one line a command prints when one
is missing)."""

from __future__ import annotations

# te doctor searches neighbours with FAISS above a size; te cache export --faiss builds an index with it.
FAISS_INSTALL = "pip install 'transfer-engine[doctor]' (or: pip install faiss-cpu)"
# te cache export writes Parquet (the metadata of --format npy, and --format parquet) with pyarrow.
PYARROW_INSTALL = "pip install pyarrow"
