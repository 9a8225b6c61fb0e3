// gather_rows: out[out_index[i]] = decode(row index[i] of data) as float32.
//
// data is the flat uint8 row area of one shard: on the CPU usually torch.frombuffer over a read-only
// mmap, so the kernels only ever read it, and every index is checked against the whole rows it holds
// before the first row is touched (a bad index is an error, never a read past the map). out is
// preallocated by the caller (pinned memory welcome) and only the rows named by out_index (default
// 0..K-1) are written. Decoding is exact: fp32 is a copy, fp16 a widening, int8 one multiply per
// element (code * scale), matching transfer_engine/ops/reference.py bit for bit.
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(te, m) {
  m.def("gather_rows(Tensor data, Tensor index, int dim, int stored_code, Tensor(a!) out, Tensor? out_index)"
        " -> Tensor(a!)");
}
