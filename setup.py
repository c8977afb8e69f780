"""Build vaekernels: setuptools drives CMake (pybind11's cmake_example pattern).

Switches (environment variables, flash-attention style):
  VAEKERNELS_CUDA=auto|0|1     build vaekernels._C_cuda: when nvcc is found (auto), never, or always
                               (a missing nvcc is then an error).
  VAEKERNELS_CUDA_ARCHS="80;86;89;90"
                               CUDA architectures; default 80, 86, 89 as SASS and 90 as SASS + PTX.
  VAEKERNELS_SANITIZE=1        build the CPU module with AddressSanitizer + UBSan.
  VAEKERNELS_BUILD_TYPE=Release|Debug|RelWithDebInfo
  MAX_JOBS=N                   parallel compile jobs.
The build never imports torch.
"""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


def _version() -> str:
    text = (ROOT / "vaekernels" / "_version.py").read_text()
    return re.search(r'__version__ = "([^"]+)"', text).group(1)


def _cuda_archs(spec: str) -> str:
    """'80;86;90' or '8.0 9.0+PTX' -> CMake list: every arch SASS-only, the last one with PTX."""
    archs = [a.replace(".", "").replace("+PTX", "") for a in re.split(r"[;, ]+", spec.strip()) if a]
    if not archs:
        raise ValueError(f"VAEKERNELS_CUDA_ARCHS={spec!r} names no architecture")
    return ";".join([f"{a}-real" for a in archs[:-1]] + [archs[-1]])


class CMakeExtension(Extension):
    def __init__(self, name: str):
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def build_extension(self, ext: Extension) -> None:
        import pybind11  # a build requirement (pyproject.toml); never torch

        out_dir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        build_temp = Path(self.build_temp).resolve() / "cmake"
        build_temp.mkdir(parents=True, exist_ok=True)

        cuda = os.environ.get("VAEKERNELS_CUDA", "auto").strip().lower()
        if cuda not in ("auto", "0", "1"):
            raise ValueError(f"VAEKERNELS_CUDA must be auto, 0 or 1, got {cuda!r}")
        args = [
            f"-DVK_OUTPUT_DIR={out_dir}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DCMAKE_BUILD_TYPE={os.environ.get('VAEKERNELS_BUILD_TYPE', 'Release')}",
            f"-DVAEKERNELS_CUDA={cuda}",
            f"-DVAEKERNELS_VERSION={_version()}",
            f"-DVAEKERNELS_SANITIZE={'ON' if os.environ.get('VAEKERNELS_SANITIZE') == '1' else 'OFF'}",
        ]
        if os.environ.get("VAEKERNELS_CUDA_ARCHS"):
            args.append(f"-DVAEKERNELS_CUDA_ARCHS={_cuda_archs(os.environ['VAEKERNELS_CUDA_ARCHS'])}")
        if os.environ.get("VAEKERNELS_STATIC_LIBSTDCXX") == "1":
            args.append("-DVK_STATIC_LIBSTDCXX=ON")
        try:
            import ninja  # noqa: F401

            args.append("-GNinja")
        except ImportError:
            pass
        jobs = os.environ.get("MAX_JOBS") or str(os.cpu_count() or 1)
        subprocess.run(["cmake", "-S", str(ROOT), "-B", str(build_temp), *args], check=True)
        subprocess.run(["cmake", "--build", str(build_temp), "--parallel", jobs], check=True)

    def copy_extensions_to_source(self) -> None:
        # build_ext --inplace: setuptools copies back only the extension it knows of (_C).
        super().copy_extensions_to_source()
        for built in (Path(self.build_lib) / "vaekernels").glob("_C_cuda*"):
            shutil.copy2(built, ROOT / "vaekernels" / built.name)


setup(
    ext_modules=[CMakeExtension("vaekernels._C")],
    cmdclass={"build_ext": CMakeBuild},
)
