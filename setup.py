"""Build the optional compiled speed-up; everything else is in pyproject.toml.

``pip install .`` compiles ``speedups/_granttag_speedups.pyx`` when a C
compiler is at hand. Without one the build says so and goes on: granttag
then uses its NumPy code for the same step (``classifier.columns``), with
the same results, somewhat slower.
"""

from __future__ import annotations

import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    """build_ext that warns instead of failing when the extension cannot be compiled."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # no compiler, no Python headers...
            self._skip(exc)

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:
            self._skip(exc)

    @staticmethod
    def _skip(exc: Exception) -> None:
        print(f"granttag: the optional compiled speed-up was not built ({exc}); the pure-Python path is used", file=sys.stderr)


def extensions() -> list[Extension]:
    try:
        from Cython.Build import cythonize
    except ImportError:
        print("granttag: Cython is not installed; the optional compiled speed-up is not built", file=sys.stderr)
        return []
    return cythonize([Extension("_granttag_speedups", ["speedups/_granttag_speedups.pyx"])], quiet=True)


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
