"""encode_rows: the compiled kernels write the stored row layout of the reference, byte for byte."""

from __future__ import annotations

import pytest
import torch

from transfer_engine import ops
from transfer_engine.ops import reference


INPUT_DTYPES = [torch.float32, torch.float16, torch.bfloat16]
SHAPES = [(1, 1), (1, 2048), (33, 7), (64, 13), (5, 1000), (257, 384), (0, 16), (3, 0)]


def features(shape: tuple[int, int], seed: int) -> torch.Tensor:
    """Rows with very different magnitudes, as pooled backbone features have."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen) * torch.rand(shape[0], 1, generator=gen) * 10


def compiled(x: torch.Tensor, stored: str) -> torch.Tensor:
    return torch.ops.te.encode_rows(x, ops.STORED_CODES[stored])


@pytest.mark.parametrize("stored", ops.STORED_DTYPES)
@pytest.mark.parametrize("dtype", INPUT_DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_kernel_matches_reference_byte_for_byte(device, stored, dtype, shape):
    x = features(shape, seed=sum(shape)).to(dtype)
    encoded = compiled(x.to(device), stored)
    assert encoded.dtype == torch.uint8 and encoded.device.type == device
    assert encoded.shape == (shape[0], ops.row_bytes(shape[1], stored))
    assert torch.equal(encoded.cpu(), reference.encode_rows(x, stored))


@pytest.mark.parametrize("stored", ops.STORED_DTYPES)
@pytest.mark.parametrize("layout", ["strided", "transposed"])
def test_non_contiguous_rows(device, stored, layout):
    base = features((40, 64), seed=3).to(device)
    x = base[::3, 5:50:2] if layout == "strided" else base.t()
    assert not x.is_contiguous()
    assert torch.equal(compiled(x, stored).cpu(), reference.encode_rows(x.cpu().contiguous(), stored))


def test_int8_row_holds_its_codes_then_its_scale(device):
    x = features((9, 13), seed=5)
    encoded = compiled(x.to(device), "int8").cpu()
    q, scale = reference.quantize_rows_int8(x)
    assert torch.equal(encoded[:, :13].view(torch.int8), q)
    assert torch.equal(encoded[:, 13:].contiguous().view(torch.float32).reshape(9), scale)


@pytest.mark.parametrize("stored", ops.STORED_DTYPES)
def test_encoded_rows_decode_back_to_the_features(device, stored):
    x = features((17, 300), seed=11)
    decoded = reference.decode_rows(ops.encode_rows(x.to(device), stored).cpu(), 300, stored)
    tolerance = {"fp32": 0.0, "fp16": 1e-2, "int8": 0.1}[stored]
    assert (decoded - x).abs().max() <= tolerance * x.abs().max()


def test_public_wrapper_runs_the_compiled_kernel(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the reference ran although the extension is loaded")

    monkeypatch.setattr(reference, "encode_rows", refuse)
    x = features((4, 10), seed=1)
    assert ops.encode_rows(x, "int8").shape == (4, 14)


def test_nan_in_an_int8_row_is_a_clear_error(device):
    x = features((4, 8), seed=2)
    x[2, 3] = float("nan")
    with pytest.raises(RuntimeError, match="row 2 holds NaN or inf"):
        compiled(x.to(device), "int8")


def test_unknown_stored_dtype_is_a_clear_error():
    with pytest.raises(ValueError, match="stored dtype must be one of"):
        ops.encode_rows(torch.ones(2, 3), "int4")
    with pytest.raises(RuntimeError, match=r"expected stored_code 0 \(fp32\), 1 \(fp16\) or 2 \(int8\), got 7"):
        torch.ops.te.encode_rows(torch.ones(2, 3), 7)


@pytest.mark.parametrize("impl", [compiled, reference.encode_rows], ids=["kernel", "reference"])
def test_bad_rows_are_a_clear_error(impl):
    with pytest.raises(RuntimeError, match="expected a 2-D tensor"):
        impl(torch.randn(2, 3, 4), "int8")
    with pytest.raises(RuntimeError, match="expected float32, float16 or bfloat16"):
        impl(torch.ones(2, 3, dtype=torch.int32), "fp16")


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (33, 7), (5, 1000), (0, 16)])
def test_split_int8_rows_gives_back_the_quantizers_codes_and_scales(shape):
    """What te cache export --dtype int8 writes: the stored codes and scales, which decode to the gathered rows."""
    x = features(shape, seed=sum(shape))
    q, scale = ops.quantize_rows_int8(x)
    codes, scales = ops.split_int8_rows(ops.encode_rows(x, "int8"), shape[1])
    assert codes.dtype == torch.int8 and scales.dtype == torch.float32
    assert torch.equal(codes, q) and torch.equal(scales, scale)
    assert torch.equal(codes.float() * scales[:, None], reference.decode_rows(ops.encode_rows(x, "int8"), shape[1], "int8"))
