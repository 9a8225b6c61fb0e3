"""gather_rows: the compiled kernels decode rows of a memory-mapped shard exactly as the reference does.

The shards here are real files mapped read-only with np.memmap, as the cache maps them: a kernel that
wrote to its input, or read past the mapping, would crash the test process.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from transfer_engine import ops
from transfer_engine.ops import reference


# (rows in the shard, dim, gathered rows): D not a multiple of 8 or 16, D = 1, one row, and gathers
# large enough to be split across threads.
CASES = [(1, 1, 1), (10, 1, 25), (1, 2048, 1), (50, 7, 13), (64, 13, 6000), (300, 384, 700), (40, 1000, 40),
         (8, 2048, 4096)]


def write_mapped_shard(path: Path, rows: torch.Tensor, trailing_bytes: int = 0) -> np.memmap:
    """Write stored rows to a file and map it read-only, as the cache does."""
    raw = rows.reshape(-1).numpy()
    with open(path, "wb") as f:
        f.write(raw.tobytes() + b"\xff" * trailing_bytes)
    return np.memmap(path, dtype=np.uint8, mode="r")


def as_tensor(mapped: np.memmap) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "non-writable buffer": the kernels never write to it
        return torch.frombuffer(mapped, dtype=torch.uint8)


def shard(tmp_path: Path, n_rows: int, dim: int, stored: str, seed: int = 0, trailing_bytes: int = 0):
    """(mapped shard bytes as a tensor, the np.memmap) for n_rows random feature rows."""
    gen = torch.Generator().manual_seed(seed + 1000 * dim + n_rows)
    x = torch.randn(n_rows, dim, generator=gen) * torch.rand(n_rows, 1, generator=gen) * 5
    mapped = write_mapped_shard(tmp_path / f"shard-{stored}-{n_rows}x{dim}", reference.encode_rows(x, stored),
                                trailing_bytes)
    return as_tensor(mapped), mapped


def shard_from_rows(tmp_path: Path, rows: torch.Tensor):
    """(mapped shard bytes as a tensor, the np.memmap) holding exactly these stored rows."""
    mapped = write_mapped_shard(tmp_path / "rows", rows)
    return as_tensor(mapped), mapped


def bits(t: torch.Tensor) -> torch.Tensor:
    """The float32 bit patterns: equal bits means equal values, signs of zero and NaN payloads."""
    return t.cpu().contiguous().view(torch.int32)


def compiled(data, index, dim, stored, out, out_index=None):
    return torch.ops.te.gather_rows(data, index, dim, ops.STORED_CODES[stored], out, out_index)


@pytest.mark.parametrize("stored", ops.STORED_DTYPES)
@pytest.mark.parametrize("n_rows,dim,count", CASES)
def test_kernel_matches_reference_bit_for_bit(tmp_path, device, stored, n_rows, dim, count):
    data, _ = shard(tmp_path, n_rows, dim, stored)
    index = torch.randint(0, n_rows, (count,), generator=torch.Generator().manual_seed(count))
    expected = reference.gather_rows(data, index, dim, stored)
    out = torch.full((count, dim), float("nan"), device=device)
    result = compiled(data.to(device), index.to(device), dim, stored, out)
    assert result is out
    assert torch.equal(bits(out), bits(expected))


@pytest.mark.parametrize("stored", ops.STORED_DTYPES)
def test_out_index_scatters_into_a_bigger_out_and_leaves_the_rest(tmp_path, device, stored):
    data, _ = shard(tmp_path, 30, 19, stored)
    index = torch.tensor([4, 29, 0, 4, 17])
    out_index = torch.tensor([9, 0, 3, 5, 11])
    out = torch.full((12, 19), -7.0, device=device)
    ops.gather_rows(data.to(device), index.to(device), 19, stored, out=out, out_index=out_index.to(device))
    expected = torch.full((12, 19), -7.0)
    expected[out_index] = reference.gather_rows(data, index, 19, stored)
    assert torch.equal(bits(out), bits(expected))


@pytest.mark.parametrize("stored", ops.STORED_DTYPES)
def test_out_may_be_a_row_slice_of_a_wider_buffer(tmp_path, device, stored):
    data, _ = shard(tmp_path, 20, 9, stored)
    buffer = torch.zeros(6, 16, device=device)
    out = buffer[:, 2:11]  # rows 16 floats apart, unit stride inside a row
    assert not out.is_contiguous()
    index = torch.tensor([3, 1, 19, 0, 8, 8])
    ops.gather_rows(data.to(device), index.to(device), 9, stored, out=out)
    assert torch.equal(bits(out), bits(reference.gather_rows(data, index, 9, stored)))
    assert (buffer[:, :2] == 0).all() and (buffer[:, 11:] == 0).all()


@pytest.mark.parametrize("stored", ops.STORED_DTYPES)
@pytest.mark.parametrize("column", [0, 1, 3])
def test_large_gathers_into_any_out_alignment_match_the_reference(tmp_path, device, stored, column):
    # Over 8 MiB of output: the CPU kernel switches int8 to streaming stores, which need 64-byte
    # aligned addresses; rows of 2047 floats starting at column 1 or 3 put every row off that grid.
    dim, count = 2047, 1100
    data, _ = shard(tmp_path, 64, dim, stored)
    index = torch.randint(0, 64, (count,), generator=torch.Generator().manual_seed(column))
    out_index = torch.randperm(count, generator=torch.Generator().manual_seed(7))
    buffer = torch.zeros(count, dim + 4, device=device)
    out = buffer[:, column:column + dim]
    ops.gather_rows(data.to(device), index.to(device), dim, stored, out=out, out_index=out_index.to(device))
    expected = torch.empty(count, dim)
    expected[out_index] = reference.gather_rows(data, index, dim, stored)
    assert torch.equal(bits(out), bits(expected))
    assert (buffer[:, :column] == 0).all() and (buffer[:, column + dim:] == 0).all()


def test_fp16_special_values_decode_exactly(tmp_path, device):
    values = torch.tensor([[0.0, -0.0, 1e-7, -3e-6, 65504.0, -65504.0, float("inf"), float("-inf"), 0.1, 1 / 3]])
    data, _ = shard_from_rows(tmp_path, reference.encode_rows(values, "fp16"))
    out = torch.empty(1, 10, device=device)
    compiled(data.to(device), torch.tensor([0], device=device), 10, "fp16", out)
    assert torch.equal(bits(out), bits(values.half().float()))


@pytest.mark.parametrize("stored", ops.STORED_DTYPES)
def test_empty_index_writes_nothing(tmp_path, device, stored):
    data, _ = shard(tmp_path, 5, 6, stored)
    out = torch.full((3, 6), 2.5, device=device)
    assert compiled(data.to(device), torch.empty(0, dtype=torch.int64, device=device), 6, stored, out) is out
    assert (out == 2.5).all()
    fresh = ops.gather_rows(data.to(device), torch.empty(0, dtype=torch.int64), 6, stored)
    assert fresh.shape == (0, 6) and fresh.dtype == torch.float32


@pytest.mark.parametrize("stored", ops.STORED_DTYPES)
def test_empty_shard_holds_no_rows(tmp_path, stored):
    data = torch.empty(0, dtype=torch.uint8)
    assert ops.gather_rows(data, torch.empty(0, dtype=torch.int64), 4, stored).shape == (0, 4)
    with pytest.raises(RuntimeError, match="row 0 is out of range for a shard of 0 rows"):
        ops.gather_rows(data, torch.tensor([0]), 4, stored)


@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int16, torch.uint8])
def test_narrow_integer_indices_gather_the_same_rows(tmp_path, index_dtype):
    data, _ = shard(tmp_path, 100, 12, "int8")
    index = torch.tensor([99, 0, 42, 42, 7])
    expected = reference.gather_rows(data, index, 12, "int8")
    assert torch.equal(bits(ops.gather_rows(data, index.to(index_dtype), 12, "int8")), bits(expected))


@pytest.mark.parametrize("impl", [compiled, ops.gather_rows, reference.gather_rows],
                         ids=["kernel", "wrapper", "reference"])
@pytest.mark.parametrize("bad", [-1, 10, 11, 2**40, 2**62, -(2**63)])
def test_index_outside_the_shard_is_a_clear_error_and_writes_nothing(tmp_path, impl, device, bad):
    data, mapped = shard(tmp_path, 10, 33, "int8")
    before = bytes(mapped)
    out = torch.full((4, 33), 3.0, device=device)
    with pytest.raises(RuntimeError, match=rf"gather_rows: row {bad} is out of range for a shard of 10 rows"):
        impl(data.to(device), torch.tensor([2, 9, bad, 0], device=device), 33, "int8", out)
    assert (out == 3.0).all()
    assert bytes(mapped) == before


@pytest.mark.parametrize("impl", [compiled, reference.gather_rows], ids=["kernel", "reference"])
def test_a_partial_trailing_row_is_never_read(tmp_path, impl):
    data, _ = shard(tmp_path, 6, 8, "fp32", trailing_bytes=31)  # 31 of a 32-byte row after the last whole one
    out = torch.empty(1, 8)
    impl(data, torch.tensor([5]), 8, "fp32", out)
    with pytest.raises(RuntimeError, match="row 6 is out of range for a shard of 6 rows"):
        impl(data, torch.tensor([6]), 8, "fp32", out)


@pytest.mark.parametrize("impl", [compiled, reference.gather_rows], ids=["kernel", "reference"])
@pytest.mark.parametrize("bad", [-1, 5, 2**40])
def test_out_index_outside_out_is_a_clear_error_and_writes_nothing(tmp_path, impl, device, bad):
    data, _ = shard(tmp_path, 10, 4, "fp16")
    out = torch.full((5, 4), 1.5, device=device)
    with pytest.raises(RuntimeError, match=rf"gather_rows: out_index {bad} is out of range for out with 5 rows"):
        impl(data.to(device), torch.tensor([1, 2], device=device), 4, "fp16", out,
             torch.tensor([0, bad], device=device))
    assert (out == 1.5).all()


BAD_ARGUMENTS = [
    # (what is wrong, data, index, dim, out, out_index, message)
    ("dim 0", torch.zeros(40, dtype=torch.uint8), torch.tensor([0]), 0, None, None, "expected dim >= 1, got 0"),
    ("2-D data", torch.zeros(4, 10, dtype=torch.uint8), torch.tensor([0]), 2, None, None,
     "expected flat uint8 shard bytes"),
    ("float data", torch.zeros(40), torch.tensor([0]), 2, None, None, "expected flat uint8 shard bytes"),
    ("float index", torch.zeros(40, dtype=torch.uint8), torch.tensor([0.0]), 2, None, None,
     "expected a 1-D integer index"),
    ("2-D index", torch.zeros(40, dtype=torch.uint8), torch.tensor([[0]]), 2, None, None,
     "expected a 1-D integer index"),
    ("float64 out", torch.zeros(40, dtype=torch.uint8), torch.tensor([0]), 2, torch.zeros(1, 2, dtype=torch.float64),
     None, r"expected out to be float32 \[M, 2\]"),
    ("out of the wrong width", torch.zeros(40, dtype=torch.uint8), torch.tensor([0]), 2, torch.zeros(1, 3), None,
     r"expected out to be float32 \[M, 2\]"),
    ("column-major out", torch.zeros(40, dtype=torch.uint8), torch.tensor([0]), 2, torch.zeros(2, 3).t(), None,
     "expected out rows with unit stride"),
    ("out too small", torch.zeros(40, dtype=torch.uint8), torch.tensor([0, 1, 2]), 2, torch.zeros(2, 2), None,
     "out has 2 rows, fewer than the 3 rows gathered; pass out_index"),
    ("out_index of another length", torch.zeros(40, dtype=torch.uint8), torch.tensor([0, 1]), 2, torch.zeros(5, 2),
     torch.tensor([0]), r"expected out_index with one entry per index \(2\), got 1"),
]


@pytest.mark.parametrize("impl", [compiled, reference.gather_rows], ids=["kernel", "reference"])
@pytest.mark.parametrize("case", BAD_ARGUMENTS, ids=[case[0] for case in BAD_ARGUMENTS])
def test_bad_arguments_are_a_clear_error(impl, case):
    _, data, index, dim, out, out_index, message = case
    if impl is compiled and out is None:
        out = torch.zeros(max(index.numel(), 1), max(dim, 1))
    with pytest.raises(RuntimeError, match=message):
        impl(data, index, dim, "int8", out, out_index)


def test_unknown_stored_dtype_is_a_clear_error():
    data = torch.zeros(40, dtype=torch.uint8)
    with pytest.raises(ValueError, match="stored dtype must be one of"):
        ops.gather_rows(data, torch.tensor([0]), 2, "bf16")
    with pytest.raises(RuntimeError, match=r"expected stored_code 0 \(fp32\), 1 \(fp16\) or 2 \(int8\), got -1"):
        torch.ops.te.gather_rows(data, torch.tensor([0]), 2, -1, torch.zeros(1, 2), None)


def test_public_wrapper_runs_the_compiled_kernel(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the reference ran although the extension is loaded")

    data, _ = shard(tmp_path, 10, 5, "int8")
    expected = reference.gather_rows(data, torch.tensor([3, 1]), 5, "int8")
    monkeypatch.setattr(reference, "gather_rows", refuse)
    assert torch.equal(ops.gather_rows(data, torch.tensor([3, 1]), 5, "int8"), expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned memory needs a CUDA device")
@pytest.mark.parametrize("stored", ops.STORED_DTYPES)
def test_gathers_into_pinned_memory_ready_for_an_async_copy(tmp_path, stored):
    data, _ = shard(tmp_path, 50, 24, stored)
    index = torch.randint(0, 50, (32,))
    out = torch.empty(32, 24, pin_memory=True)
    ops.gather_rows(data, index, 24, stored, out=out)
    assert out.is_pinned()
    on_gpu = out.to("cuda", non_blocking=True)
    torch.cuda.synchronize()
    assert torch.equal(bits(on_gpu), bits(reference.gather_rows(data, index, 24, stored)))


@pytest.mark.cuda
@pytest.mark.parametrize("stored", ops.STORED_DTYPES)
def test_cuda_kernel_takes_an_index_from_the_host(tmp_path, stored):
    data, _ = shard(tmp_path, 40, 10, stored)
    index = torch.tensor([39, 2, 2, 0])
    out = torch.empty(4, 10, device="cuda")
    ops.gather_rows(data.to("cuda"), index, 10, stored, out=out)
    assert torch.equal(bits(out), bits(reference.gather_rows(data, index, 10, stored)))


@pytest.mark.cuda
@pytest.mark.parametrize("stored", ops.STORED_DTYPES)
@pytest.mark.parametrize("offset", [1, 2, 3])
def test_cuda_kernel_reads_a_shard_at_an_unaligned_offset(tmp_path, stored, offset):
    data, _ = shard(tmp_path, 12, 5, stored)
    padded = torch.zeros(data.numel() + offset, dtype=torch.uint8, device="cuda")
    padded[offset:] = data.to("cuda")
    index = torch.tensor([11, 0, 6])
    out = torch.empty(3, 5, device="cuda")
    ops.gather_rows(padded[offset:], index, 5, stored, out=out)
    assert torch.equal(bits(out), bits(reference.gather_rows(data, index, 5, stored)))


@pytest.mark.cuda
@pytest.mark.parametrize("impl", [compiled, reference.gather_rows], ids=["kernel", "reference"])
def test_out_on_another_device_than_data_is_a_clear_error(impl):
    data = torch.zeros(40, dtype=torch.uint8)
    out = torch.zeros(1, 2, device="cuda")
    with pytest.raises(RuntimeError, match=r"expected out on the device of data \(cpu\), got cuda:0"):
        impl(data, torch.tensor([0]), 2, "int8", out)
