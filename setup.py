"""Builds kefu with its Cython codec when it can, and without it when it can't.

KEFU_NO_EXTENSIONS=1, a missing Cython or a failing compiler all fall back
to the pure-Python twin (kefu/_tlv_py.py): slower, never broken.
"""
import os
import sys

from setuptools import setup
from setuptools.command.build_ext import build_ext


def _no_extensions() -> bool:
    return os.environ.get("KEFU_NO_EXTENSIONS", "") not in ("", "0")


class OptionalBuildExt(build_ext):
    """A failed compile is a warning, not a failed install."""

    def run(self):
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - any build failure means "use the twin"
            print(f"kefu: C codec not built ({exc}); using the pure-Python codec", file=sys.stderr)

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001
            print(f"kefu: C codec not built ({exc}); using the pure-Python codec", file=sys.stderr)


def _extensions():
    if _no_extensions():
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        print("kefu: Cython not installed; using the pure-Python codec", file=sys.stderr)
        return []
    return cythonize(["kefu/_tlv.pyx"], language_level=3, quiet=True)


setup(ext_modules=_extensions(), cmdclass={"build_ext": OptionalBuildExt})
