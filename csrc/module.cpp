// The Python module transfer_engine._C. Importing it registers every op of this library with
// PyTorch's dispatcher (each csrc/<op>.cpp declares its schema once; csrc/cpu/ and csrc/cuda/ register
// kernels per device). The functions below only describe how the module was built.
#include <torch/extension.h>

#ifdef _OPENMP
#include <omp.h>
#endif

// The op namespace. Each op file adds its schema with TORCH_LIBRARY_FRAGMENT(te, m).
TORCH_LIBRARY(te, m) {}

namespace {

bool cuda_compiled() {
#ifdef TE_WITH_CUDA
  return true;
#else
  return false;
#endif
}

int openmp_max_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "transfer_engine C++/CUDA kernels; the ops live in torch.ops.te";
  m.def("cuda_compiled", &cuda_compiled, "True when the CUDA kernels were compiled into this build");
  m.def("openmp_max_threads", &openmp_max_threads, "Threads OpenMP would use for the CPU kernels");
}
