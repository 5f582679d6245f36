"""Build script: pure-Python package plus the Cython extension cclb_wire._codec.

The extension is required: if it fails to compile, the build fails. Set
CCLB_WIRE_PUREPYTHON=1 at build time to build a pure-Python package on purpose
(the fallback backend then serves every call).
"""

import os
import sys

from setuptools import Extension, setup

PURE = os.environ.get("CCLB_WIRE_PUREPYTHON", "") not in ("", "0")


def extensions():
    if PURE:
        print("cclb_wire: CCLB_WIRE_PUREPYTHON is set, building without the Cython extension", file=sys.stderr)
        return []
    from Cython.Build import cythonize  # a build requirement (pyproject.toml)

    compile_args = [] if sys.platform == "win32" else ["-O3"]
    undef = []
    if os.environ.get("CCLB_WIRE_SANITIZE"):  # AddressSanitizer build for the crash checks
        compile_args = ["-O1", "-g", "-fsanitize=address", "-fno-omit-frame-pointer"]
        undef = ["NDEBUG"]
    ext = Extension(
        "cclb_wire._codec",
        ["cclb_wire/_codec.pyx"],
        extra_compile_args=compile_args,
        extra_link_args=["-fsanitize=address"] if os.environ.get("CCLB_WIRE_SANITIZE") else [],
        undef_macros=undef,
    )
    return cythonize([ext], compiler_directives={"language_level": "3"}, quiet=True)


setup(ext_modules=extensions())
