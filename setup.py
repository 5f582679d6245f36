"""Build script: pure-Python package plus the Cython extension cclb_wire._codec.

The extension is required: if it fails to compile, the build fails. Set
CCLB_WIRE_PUREPYTHON=1 at build time to build a pure-Python package on purpose
(the fallback backend then serves every call; the wheel is then py3-none-any).

The extension is built optimised, without debug information and stripped, unless asked:
- CCLB_WIRE_DEBUG_BUILD=1: -O0 -g, symbols kept (MSVC: /Od /Zi, linked with /DEBUG);
- CCLB_WIRE_SANITIZE=address (or e.g. "fuzzer-no-link,address" with clang): -O1 -g
  and the sanitizer, symbols kept, NDEBUG undefined (gcc or clang only);
- a -g flag in CFLAGS (e.g. fuzz/native.sh): debug information and symbols kept.
The build flags are recorded in build_temp, so switching these rebuilds the extension.
"""

import os
import shlex
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


def _flag(name):
    return os.environ.get(name, "") not in ("", "0")


PURE = _flag("CCLB_WIRE_PUREPYTHON")
DEBUG = _flag("CCLB_WIRE_DEBUG_BUILD")
SANITIZE = os.environ.get("CCLB_WIRE_SANITIZE", "")


def _cflags_ask_for_debug_info():
    flags = shlex.split(os.environ.get("CFLAGS", ""))
    return any(f.startswith("-g") and f != "-g0" for f in flags)


def _build_flags(compiler_type, platform):
    """(extra compile args, extra link args, macros to undefine) for this compiler."""
    if compiler_type == "msvc":
        if SANITIZE:
            sys.exit("cclb_wire: CCLB_WIRE_SANITIZE needs gcc or clang, not MSVC")
        if DEBUG:
            return ["/Od", "/Zi"], ["/DEBUG"], []
        # setuptools' MSVC release flags (/Ox, no /Zi, no /DEBUG) carry no debug info.
        return [], [], []
    if SANITIZE:
        return (["-O1", "-g", "-fno-omit-frame-pointer", f"-fsanitize={SANITIZE}"],
                [f"-fsanitize={SANITIZE}"], ["NDEBUG"])
    if DEBUG:
        return ["-O0", "-g"], [], []
    if _cflags_ask_for_debug_info():
        return ["-O3"], [], []
    # Python's own CFLAGS usually hold -g: -g0 (last wins) drops it; the linker strips.
    strip = ["-Wl,-S", "-Wl,-x"] if platform == "darwin" else ["-Wl,--strip-all"]
    return ["-O3", "-g0"], strip, []


class BuildExt(build_ext):
    def build_extensions(self):
        compile_args, link_args, undef = _build_flags(self.compiler.compiler_type, sys.platform)
        stamp = os.path.join(self.build_temp, "cclb_wire_build_flags.txt")
        record = repr((self.compiler.compiler_type, compile_args, link_args, undef,
                       [os.environ.get(v) for v in ("CC", "CFLAGS", "LDFLAGS")]))
        os.makedirs(self.build_temp, exist_ok=True)
        try:
            with open(stamp) as f:
                unchanged = f.read() == record
        except OSError:
            unchanged = False
        if not unchanged:  # a newer stamp makes build_ext rebuild the extension
            with open(stamp, "w") as f:
                f.write(record)
        for ext in self.extensions:
            ext.extra_compile_args = list(ext.extra_compile_args or []) + compile_args
            ext.extra_link_args = list(ext.extra_link_args or []) + link_args
            ext.undef_macros = list(ext.undef_macros or []) + undef
            ext.depends = list(ext.depends or []) + [stamp]
        super().build_extensions()


def extensions():
    if PURE:
        print("cclb_wire: CCLB_WIRE_PUREPYTHON is set, building without the Cython extension", file=sys.stderr)
        return []
    from Cython.Build import cythonize  # a build requirement (pyproject.toml)

    ext = Extension("cclb_wire._codec", ["cclb_wire/_codec.pyx"])
    return cythonize([ext], compiler_directives={"language_level": "3"}, quiet=True)


setup(ext_modules=extensions(), cmdclass={"build_ext": BuildExt})
