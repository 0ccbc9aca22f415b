"""Builds llmint8._C: CPU kernels always, CUDA kernels when the installed torch has CUDA."""
import glob
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


def extension():
    sources = ["csrc/ops.cpp", "csrc/checks.cpp", "csrc/reference.cpp", *sorted(glob.glob("csrc/cpu/*.cpp"))]
    cxx_flags = ["-O3", "-fdiagnostics-color=always"]
    if not with_cuda():
        return cpp_extension.CppExtension(
            "llmint8._C", sources, extra_compile_args={"cxx": cxx_flags}, py_limited_api=False
        )
    includes, libs = cublas_wheel_dirs()
    nvcc_flags = ["-O3", "--expt-relaxed-constexpr", "-lineinfo"]
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
