"""Build script: compiles our two native packages from ``submodules/``.

* CPU kernels (C++ with OpenMP) are always built.
* CUDA kernels are built when torch has CUDA and an ``nvcc`` is found, with or without a visible GPU.
  ``GT_BUILD_CUDA=0`` / ``GT_BUILD_CUDA=1`` forces the decision (``1`` fails loudly when impossible).
  ``TORCH_CUDA_ARCH_LIST`` is honoured; when it is unset and no GPU is visible a default list is used.

Metadata lives in ``pyproject.toml``. Build with ``pip install --no-build-isolation .`` so that the torch
already installed is the one the extensions are compiled against.
"""

import glob
import os
import shutil
import sys

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
RAST_DIR = os.path.join("submodules", "diff-gaussian-rasterization")
KNN_DIR = os.path.join("submodules", "simple-knn")

# Architectures compiled when no GPU is visible and TORCH_CUDA_ARCH_LIST is unset. CUDA 13 dropped
# everything below Turing. sm_80 code also runs on 8.6 and 8.9 (same major version); the PTX of the
# last entry lets newer GPUs (Blackwell) JIT-compile the kernels.
DEFAULT_CUDA_ARCHS = "7.5;8.0;9.0+PTX"


def _log(msg):
    print(f"[gaussiantalker setup] {msg}", file=sys.stderr)


def _import_torch():
    try:
        import torch  # noqa: F401
        from torch.utils import cpp_extension
    except ImportError:
        sys.exit(
            "gaussiantalker: torch must be installed before building the native extensions.\n"
            "  pip install torch torchvision\n"
            "  pip install --no-build-isolation .\n"
        )
    return torch, cpp_extension


def _find_cuda_home():
    """The real CUDA root. The `nvcc` on PATH may be a wrapper script outside the toolkit, which makes
    torch derive a wrong CUDA_HOME, so well-known roots are preferred over PATH."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    candidates += sorted(glob.glob("/usr/local/cuda-*"), reverse=True)
    for root in candidates:
        if root and os.path.isfile(os.path.join(root, "bin", "nvcc")) and os.path.isdir(
            os.path.join(root, "include")
        ):
            return os.path.realpath(root)
    nvcc = shutil.which("nvcc")
    if nvcc:
        root = os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
        if os.path.isdir(os.path.join(root, "include")):
            return root
    return None


def _nvidia_wheel_includes():
    """Header folders of the `nvidia-*` wheels (cuBLAS, cuSPARSE, ... for CUDA 13 live under
    site-packages/nvidia/cu13/include); torch's CUDA headers include them."""
    dirs = []
    for base in sys.path:
        nv = os.path.join(base, "nvidia")
        if not os.path.isdir(nv):
            continue
        dirs += glob.glob(os.path.join(nv, "cu*", "include"))
        dirs += glob.glob(os.path.join(nv, "*", "include"))
    seen, out = set(), []
    for d in dirs:
        d = os.path.realpath(d)
        if d not in seen and os.path.isdir(d):
            seen.add(d)
            out.append(d)
    return out


def _cuda_decision(torch):
    """Return (build_cuda, cuda_home)."""
    force = os.environ.get("GT_BUILD_CUDA")
    if force not in (None, "", "0", "1"):
        sys.exit(f"gaussiantalker: GT_BUILD_CUDA must be 0 or 1, got {force!r}")
    if force == "0":
        _log("GT_BUILD_CUDA=0: building the CPU kernels only")
        return False, None
    cuda_home = _find_cuda_home()
    problems = []
    if torch.version.cuda is None:
        problems.append("this torch build has no CUDA")
    if cuda_home is None:
        problems.append("no CUDA toolkit (nvcc) found; set CUDA_HOME")
    if problems:
        if force == "1":
            sys.exit("gaussiantalker: GT_BUILD_CUDA=1 but " + "; ".join(problems))
        _log("building the CPU kernels only: " + "; ".join(problems))
        return False, None
    return True, cuda_home


def _arch_list(torch):
    archs = os.environ.get("TORCH_CUDA_ARCH_LIST", "").strip()
    if archs:
        return archs
    if torch.cuda.is_available():
        caps = sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
        return ";".join(f"{a}.{b}" for a, b in caps)
    return DEFAULT_CUDA_ARCHS


def _openmp_flags():
    if sys.platform == "darwin":
        return [], []  # Apple clang has no OpenMP by default; the kernels fall back to one thread.
    if sys.platform == "win32":
        return ["/openmp"], []
    return ["-fopenmp"], ["-fopenmp"]


def _extensions():
    torch, cpp_extension = _import_torch()
    build_cuda, cuda_home = _cuda_decision(torch)
    omp_c, omp_l = _openmp_flags()
    cxx = ["-O3", "-std=c++20"] + omp_c if sys.platform != "win32" else ["/O2", "/std:c++20"] + omp_c
    define = []
    nvcc = ["-O3", "-std=c++20", "-lineinfo", "--expt-relaxed-constexpr"]
    include_extra = []

    if build_cuda:
        os.environ["CUDA_HOME"] = cuda_home
        cpp_extension.CUDA_HOME = cuda_home  # the module captured CUDA_HOME at import time
        archs = _arch_list(torch)
        os.environ["TORCH_CUDA_ARCH_LIST"] = archs
        include_extra = _nvidia_wheel_includes()
        define = [("WITH_CUDA", None)]
        # The arch list reaches the binary through a generated header: a quoted macro with ';' in it
        # does not survive the compiler command line.
        gen_dir = os.path.join(HERE, "build", "gt_generated")
        os.makedirs(gen_dir, exist_ok=True)
        with open(os.path.join(gen_dir, "gt_build_config.h"), "w") as f:
            f.write(f'#pragma once\n#define GT_CUDA_ARCH_LIST "{archs}"\n')
        include_extra = [gen_dir] + include_extra
        _log(f"building CPU + CUDA kernels (CUDA_HOME={cuda_home}, archs={archs})")

    def make(name, src_dir):
        csrc = os.path.join(src_dir, "csrc")
        sources = sorted(glob.glob(os.path.join(csrc, "*.cpp")))
        include_dirs = [os.path.join(HERE, csrc)] + include_extra
        if build_cuda:
            sources += sorted(glob.glob(os.path.join(csrc, "*.cu")))
            return cpp_extension.CUDAExtension(
                name,
                sources,
                include_dirs=include_dirs,
                define_macros=define,
                extra_compile_args={"cxx": cxx, "nvcc": nvcc},
                extra_link_args=omp_l,
            )
        return cpp_extension.CppExtension(
            name,
            sources,
            include_dirs=include_dirs,
            define_macros=define,
            extra_compile_args={"cxx": cxx},
            extra_link_args=omp_l,
        )

    exts = [
        make("diff_gaussian_rasterization._C", RAST_DIR),
        make("simple_knn._C", KNN_DIR),
    ]
    return exts, cpp_extension.BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)


def _packages():
    pkgs = ["gaussiantalker"] + [
        "gaussiantalker." + os.path.relpath(root, "gaussiantalker").replace(os.sep, ".")
        for root, _dirs, files in os.walk("gaussiantalker")
        if "__init__.py" in files and root != "gaussiantalker"
    ]
    return sorted(pkgs) + ["diff_gaussian_rasterization", "simple_knn"]


class BuildPyWithPresets(build_py):
    """Installs the top-level ``configs/*.py`` presets as ``gaussiantalker/configs/`` (package data), so
    ``--config 64_dim_1_transformer`` works from any directory; a source checkout reads ``configs/``."""

    def run(self):
        super().run()
        target = os.path.join(self.build_lib, "gaussiantalker", "configs")
        os.makedirs(target, exist_ok=True)
        for name in sorted(os.listdir(os.path.join(HERE, "configs"))):
            if name.endswith((".py", ".md")):
                self.copy_file(os.path.join(HERE, "configs", name), os.path.join(target, name))


if __name__ == "__main__":
    os.chdir(HERE)
    ext_modules, build_ext = _extensions()
    setup(
        packages=_packages(),
        package_dir={
            "gaussiantalker": "gaussiantalker",
            "diff_gaussian_rasterization": os.path.join(RAST_DIR, "diff_gaussian_rasterization"),
            "simple_knn": os.path.join(KNN_DIR, "simple_knn"),
        },
        package_data={"gaussiantalker": ["py.typed"]},
        ext_modules=ext_modules,
        cmdclass={"build_ext": build_ext, "build_py": BuildPyWithPresets},
        zip_safe=False,
    )
