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
    link_args = []
    undef = []
    sanitize = os.environ.get("CCLB_WIRE_SANITIZE")  # e.g. "address", or "fuzzer-no-link,address" with clang
    if sanitize:
        compile_args = ["-O1", "-g", "-fno-omit-frame-pointer", f"-fsanitize={sanitize}"]
        link_args = [f"-fsanitize={sanitize}"]
        undef = ["NDEBUG"]
    ext = Extension(
        "cclb_wire._codec",
        ["cclb_wire/_codec.pyx"],
        extra_compile_args=compile_args,
        extra_link_args=link_args,
        undef_macros=undef,
    )
    return cythonize([ext], compiler_directives={"language_level": "3"}, quiet=True)


setup(ext_modules=extensions())
