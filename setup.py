"""Builds the C++ (and, when a CUDA toolkit is found, CUDA) extension ``transfer_engine._C``.

Everything else about the package lives in pyproject.toml. Install with
``pip install --no-build-isolation -e .`` once torch is installed.

Environment switches:
    TE_FORCE_CPU=1    build the C++ kernels only, even when a CUDA toolkit is present.
    TE_FORCE_CUDA=1   build the CUDA kernels too, even when torch cannot find a toolkit on its own
                      (fails loudly if nvcc is missing).
    TORCH_CUDA_ARCH_LIST  GPU architectures to compile for; without a visible GPU we default to
                      "8.0;9.0+PTX": sm_80 code also runs on 8.6/8.9 (Ampere, Ada), 9.0 is Hopper, and
                      the PTX lets newer chips JIT-compile it. Each extra architecture costs compile time. (A100, consumer Ampere, Ada, Hopper, PTX for newer chips).
"""

from __future__ import annotations

import glob
import os
import sys

from setuptools import setup


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def _default_cuda_home() -> None:
    # torch guesses CUDA_HOME from `which nvcc`; a symlinked /usr/local/bin/nvcc makes that guess
    # /usr/local, which has no libcudart. Prefer the conventional toolkit folder when it is there.
    if not os.environ.get("CUDA_HOME") and not os.environ.get("CUDA_PATH"):
        if os.path.exists("/usr/local/cuda/bin/nvcc"):
            os.environ["CUDA_HOME"] = "/usr/local/cuda"


def _resolve_cuda() -> tuple[bool, str]:
    """Decide whether to compile the CUDA kernels, and say why."""
    from torch.utils import cpp_extension

    if _flag("TE_FORCE_CPU"):
        return False, "TE_FORCE_CPU=1"
    if _flag("TE_FORCE_CUDA"):
        return True, "TE_FORCE_CUDA=1"
    import torch

    if torch.version.cuda is None:
        return False, f"torch {torch.__version__} is a CPU-only build"
    if cpp_extension.CUDA_HOME is None:
        return False, "no CUDA toolkit found (set CUDA_HOME=/path/to/cuda)"
    nvcc = os.path.join(cpp_extension.CUDA_HOME, "bin", "nvcc")
    if not os.path.exists(nvcc):
        return False, f"CUDA_HOME={cpp_extension.CUDA_HOME} has no bin/nvcc"
    if not glob.glob(os.path.join(cpp_extension.CUDA_HOME, "lib*", "libcudart.so*")):
        return False, f"CUDA_HOME={cpp_extension.CUDA_HOME} has no libcudart (set CUDA_HOME to the toolkit)"
    return True, f"CUDA toolkit at {cpp_extension.CUDA_HOME}"


def _extensions():
    import torch
    from torch.utils import cpp_extension

    here = os.path.dirname(os.path.abspath(__file__))
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")) + glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    with_cuda, why = _resolve_cuda()
    cxx_flags = ["-O3", "-fopenmp"]  # torch's build adds the C++ standard it needs (C++20 for 2.14)
    define_macros = []
    # `import transfer_engine._C` must find libc10/libtorch without torch imported first: an rpath to
    # torch's lib folder as installed ($ORIGIN/../torch/lib in site-packages, and the absolute folder of
    # the torch this was built against, for editable installs).
    torch_lib = os.path.join(os.path.dirname(os.path.abspath(torch.__file__)), "lib")
    extra_link = ["-fopenmp", "-Wl,-rpath,$ORIGIN/../torch/lib", f"-Wl,-rpath,{torch_lib}"]
    if with_cuda:
        sources += sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
        define_macros.append(("TE_WITH_CUDA", None))
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
            os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0+PTX"
        ext_cls = cpp_extension.CUDAExtension
        extra = {"cxx": cxx_flags, "nvcc": ["-O3", "--use_fast_math"]}
    else:
        ext_cls = cpp_extension.CppExtension
        extra = {"cxx": cxx_flags}
    print(
        f"transfer_engine: building _C with {'C++ + CUDA' if with_cuda else 'C++ only'} ({why}); "
        f"torch {torch.__version__}"
        + (f", TORCH_CUDA_ARCH_LIST={os.environ.get('TORCH_CUDA_ARCH_LIST')}" if with_cuda else "")
        + f"; {len(sources)} source files",
        file=sys.stderr,
    )
    return [
        ext_cls(
            name="transfer_engine._C",
            sources=sources,
            include_dirs=[os.path.join(here, "csrc")],
            define_macros=define_macros,
            extra_compile_args=extra,
            extra_link_args=extra_link,
        )
    ], cpp_extension.BuildExtension.with_options(use_ninja=True)


_default_cuda_home()
ext_modules, build_ext = _extensions()
setup(ext_modules=ext_modules, cmdclass={"build_ext": build_ext})
