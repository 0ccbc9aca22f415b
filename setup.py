"""Builds llmint8._C: CPU kernels always, CUDA kernels when the installed torch has CUDA."""
import glob
import importlib.util
import os
import sysconfig
from pathlib import Path

from setuptools import find_packages, setup
from torch.utils import cpp_extension

ROOT = Path(__file__).parent.resolve()


def with_cuda() -> bool:
    if os.environ.get("LLMINT8_FORCE_CPU", "0") == "1":
        return False
    return cpp_extension.CUDA_HOME is not None and __import__("torch").version.cuda is not None


def cublas_wheel_dirs() -> tuple[list[str], list[str]]:
    """Include and library folders of a pip-installed cuBLAS (nvidia-cublas), if any."""
    site = Path(sysconfig.get_paths()["purelib"])
    includes = sorted(str(p.parent) for p in site.glob("nvidia/*/include/cublasLt.h"))
    libs = sorted(str(p.parent) for p in site.glob("nvidia/*/lib/libcublasLt.so*"))
    return includes, libs


def cutlass_include_dirs() -> list[str]:
    """CUTLASS's header folders: $CUTLASS_INCLUDE_DIR (the folder holding cutlass/cutlass.h), else
    the nvidia-cutlass wheel's, found without importing it; [] when neither exists."""
    include = os.environ.get("CUTLASS_INCLUDE_DIR")
    if not include:
        spec = importlib.util.find_spec("cutlass_library")
        if spec is None or not spec.submodule_search_locations:
            return []
        include = str(Path(spec.submodule_search_locations[0]) / "source" / "include")
    if not (Path(include) / "cutlass" / "cutlass.h").is_file():
        return []
    # The wheel and a CUTLASS checkout both keep the utilities (packed_stride.hpp) here.
    return [include, str(Path(include).parent / "tools" / "util" / "include")]


def builds_sm90a_only_for_hopper() -> bool:
    """Whether the build gives H100s sm_90a code and no plain sm_90 code. CUTLASS's wgmma kernels
    have a body only in the sm_90a image; an H100 running any other image of them would skip the
    GEMM and leave the output unwritten. Asks torch for the -gencode flags it will pass (from
    TORCH_CUDA_ARCH_LIST, else the visible GPUs)."""
    codes = [flag.rpartition("code=")[2] for flag in cpp_extension._get_cuda_arch_flags()]
    return "sm_90a" in codes and "sm_90" not in codes


def cutlass_nvcc_flags() -> list[str]:
    """Flags that build the fused sm90 GEMM (csrc/cuda/int8_gemm_sm90.cu); without them it
    compiles to a stub that reports itself inapplicable."""
    includes = cutlass_include_dirs()
    if not includes:
        print("llmint8: CUTLASS headers not found, building without the fused sm90 int8 GEMM")
        return []
    if not builds_sm90a_only_for_hopper():
        print("llmint8: no sm_90a-only Hopper code in the arch list (set TORCH_CUDA_ARCH_LIST, "
              "e.g. '8.0+PTX;9.0a'), building without the fused sm90 int8 GEMM")
        return []
    print(f"llmint8: fused sm90 int8 GEMM uses CUTLASS from {includes[0]}")
    # -isystem: CUTLASS's own warnings are not ours. NDEBUG drops CUTLASS's device-side asserts.
    system_includes = [flag for d in includes for flag in ("-isystem", d)]
    return [*system_includes, "-DLLMINT8_WITH_CUTLASS_SM90=1", "-DNDEBUG"]


def extension():
    sources = ["csrc/ops.cpp", "csrc/checks.cpp", "csrc/reference.cpp", *sorted(glob.glob("csrc/cpu/*.cpp"))]
    cxx_flags = ["-O3", "-fdiagnostics-color=always"]
    if not with_cuda():
        return cpp_extension.CppExtension(
            "llmint8._C", sources, extra_compile_args={"cxx": cxx_flags}, py_limited_api=False
        )
    includes, libs = cublas_wheel_dirs()
    nvcc_flags = ["-O3", "--expt-relaxed-constexpr", "-lineinfo", *cutlass_nvcc_flags()]
    # Link against whichever libcublasLt soname exists; torch has already loaded the same one.
    link_args = [f"-L{d}" for d in libs] + [f"-Wl,-rpath,{d}" for d in libs]
    versioned = [p for d in libs for p in glob.glob(f"{d}/libcublasLt.so.*")]
    libraries = [] if versioned else ["cublasLt"]
    if versioned:
        link_args.append(f"-l:{Path(sorted(versioned)[0]).name}")
    return cpp_extension.CUDAExtension(
        "llmint8._C",
        sources + sorted(glob.glob("csrc/cuda/*.cu")),
        include_dirs=includes,
        libraries=libraries,
        extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags},
        extra_link_args=link_args,
    )


setup(
    packages=find_packages("python"),
    package_dir={"": "python"},
    ext_modules=[extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(no_python_abi_suffix=True)},
)
