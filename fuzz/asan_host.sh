#!/usr/bin/env bash
# The host-call fuzzer (fuzz/fuzz_host.py) against an AddressSanitizer build of the extension.
#
# Usage: fuzz/asan_host.sh SECONDS [WORKDIR] [fuzz_host.py options...]
#   e.g. fuzz/asan_host.sh 120 /tmp/cclb-wire-asan-host --seed 3
#   WORKDIR defaults to /tmp/cclb-wire-asan-host.
# Needs: clang and libclang-rt-14-dev (Debian). Exits non-zero on a fuzzer finding, a
# crash, or any AddressSanitizer report (the reports are kept in WORKDIR/asan.*).
#
# It copies the working tree (tracked and untracked files, not ignored ones: the build
# products are rebuilt), builds the extension there with clang and -fsanitize=address,
# proves that ASan is live (the .so is instrumented, the runtime initialises, and a
# deliberate heap overflow in a canary library is reported), then runs the fuzzer with
# the ASan runtime preloaded (CPython itself is not instrumented).
set -euo pipefail
seconds="$1"; shift
work=/tmp/cclb-wire-asan-host
if [ $# -gt 0 ] && [[ "$1" != -* ]]; then work="$1"; shift; fi
repo="$(cd "$(dirname "$0")/.." && pwd)"
python="$(python3 -c 'import sys; print(sys.executable)')"  # the real interpreter, not a shim
asan_rt="$(clang -print-file-name=libclang_rt.asan-x86_64.so)"
[ -f "$asan_rt" ] || { echo "asan_host: no ASan runtime ($asan_rt): apt-get install clang libclang-rt-14-dev" >&2; exit 2; }

mkdir -p "$work"
rm -rf "$work/src" "$work"/asan.* && mkdir -p "$work/src"
# Tracked and untracked files as they are in the working tree (a file deleted there is skipped).
(cd "$repo" && git ls-files -z --cached --others --exclude-standard \
    | while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done \
    | tar --null -cf - -T -) | tar -xf - -C "$work/src"
echo "asan_host: building the extension with -fsanitize=address in $work/src (log: $work/build.log)"
(cd "$work/src" && CC=clang CCLB_WIRE_SANITIZE=address \
    "$python" setup.py build_ext --inplace --force > "$work/build.log" 2>&1) \
    || { tail -30 "$work/build.log"; exit 2; }
so="$(ls "$work"/src/cclb_wire/_codec*.so)"

# ASan must not take wasmtime's signals: traps (SIGSEGV/SIGBUS on guard pages, SIGILL,
# SIGFPE) are handled by wasmtime's own handlers, which ASan must let it install.
# detect_leaks=0: CPython leaks at exit. PYTHONMALLOC=malloc: Python objects come from
# malloc, so ASan sees the bounds of the buffers the extension reads and writes.
export ASAN_OPTIONS="handle_segv=0:handle_sigbus=0:handle_sigill=0:handle_sigfpe=0:handle_abort=1:allow_user_segv_handler=1:detect_leaks=0:halt_on_error=1:abort_on_error=0:exitcode=86:log_path=$work/asan:${ASAN_OPTIONS_EXTRA:-}"
export ASAN_SYMBOLIZER_PATH="${ASAN_SYMBOLIZER_PATH:-$(command -v llvm-symbolizer || true)}"
export PYTHONMALLOC=malloc
run() { LD_PRELOAD="$asan_rt" PYTHONPATH="$work/src${PYTHONPATH:+:$PYTHONPATH}" "$python" "$@"; }

# 1. the extension is instrumented: calls to ASan's checks throughout its code
count="$(objdump -d "$so" | grep -c 'call.*<__asan_report_' || true)"
[ "$count" -gt 0 ] || { echo "asan_host: $so has no calls to __asan_report_*: not instrumented" >&2; exit 2; }
# 2. the runtime initialises in the interpreter, and the instrumented copy is what loads
loaded="$(cd "$work" && ASAN_OPTIONS="$ASAN_OPTIONS:verbosity=1:log_path=stderr" run -c \
    'import cclb_wire, cclb_wire._codec as c; print(cclb_wire.BACKEND, c.__file__)' 2> "$work/init.log")"
grep -q "AddressSanitizer: libc interceptors initialized" "$work/init.log" \
    || { cat "$work/init.log" >&2; echo "asan_host: the ASan runtime did not initialise" >&2; exit 2; }
[ "$loaded" = "cython $so" ] || { echo "asan_host: loaded '$loaded', not $so" >&2; exit 2; }
# 3. a deliberate heap overflow, compiled and run the same way, is reported
printf '#include <stdlib.h>\nint overflow(int i) { char *p = malloc(8); p[i] = 1; int r = p[0]; free(p); return r; }\n' > "$work/canary.c"
clang -shared -fPIC -g -fsanitize=address -fno-omit-frame-pointer -o "$work/canary.so" "$work/canary.c"
rm -f "$work"/asan.*
status=0; (cd "$work" && run -c "import ctypes; ctypes.CDLL('$work/canary.so').overflow(8)" 2> "$work/canary.log") || status=$?
if [ "$status" -ne 86 ] || ! grep -qs "heap-buffer-overflow" "$work"/asan.*; then
    echo "asan_host: the canary overflow was not reported (exit $status): ASan is not active" >&2; exit 2
fi
rm -f "$work"/asan.*
echo "asan_host: ASan active ($count checked accesses in $(basename "$so"), runtime initialised, canary overflow caught)"

status=0
(cd "$work/src" && run fuzz/fuzz_host.py --seconds "$seconds" --case-file "$work/case.json" "$@") || status=$?
if compgen -G "$work/asan.*" > /dev/null; then
    cat "$work"/asan.* >&2
    echo "asan_host: AddressSanitizer reported errors (above; kept in $work/asan.*); call in flight: $work/case.json" >&2
    exit 1
fi
if [ "$status" -ne 0 ]; then
    echo "asan_host: fuzz_host.py exited with $status; call in flight: $work/case.json" >&2
fi
exit "$status"
