#!/usr/bin/env bash
# Coverage-guided fuzzing of the extension's C code: build an instrumented copy of the
# extension with clang, preload libFuzzer, run fuzz/atheris_codec.py on one entry point.
#
# Usage: fuzz/native.sh ENTRY SECONDS [WORKDIR]
#   ENTRY: decode | decode_filter_output | decode_shaped_request
# Needs: clang and libclang-rt-14-dev (Debian), atheris built from source
# (CLANG_BIN=$(which clang) pip install --no-binary atheris atheris).
set -euo pipefail
entry="$1"; seconds="$2"; work="${3:-/tmp/cclb-wire-native-fuzz}"
repo="$(cd "$(dirname "$0")/.." && pwd)"
runtime_dir="$(dirname "$(clang -print-file-name=libclang_rt.fuzzer_no_main-x86_64.a)")"

mkdir -p "$work"
if [ ! -f "$work/libfuzzer_no_main.so" ]; then
    # libFuzzer alone as a shared object: atheris then uses it ("preloaded libfuzzer")
    # and the extension's coverage hooks resolve to it.
    clang++ -shared -o "$work/libfuzzer_no_main.so" -Wl,--whole-archive \
        "$runtime_dir/libclang_rt.fuzzer_no_main-x86_64.a" -Wl,--no-whole-archive -lpthread -ldl -lrt
fi
rm -rf "$work/src" && mkdir -p "$work/src"
(cd "$repo" && git ls-files | tar -cf - -T -) | tar -xf - -C "$work/src"
(cd "$work/src" && CC=clang CFLAGS="-fsanitize-coverage=inline-8bit-counters,pc-table,trace-cmp -g" \
    python3 setup.py build_ext --inplace > "$work/build.log" 2>&1)
python="$(python3 -c 'import sys; print(sys.executable)')"  # the real interpreter, not a shim
mkdir -p "$work/corpus-$entry"
cd "$work/src"
LD_PRELOAD="$work/libfuzzer_no_main.so" PYTHONPATH="$work/src${PYTHONPATH:+:$PYTHONPATH}" exec "$python" \
    fuzz/atheris_codec.py "$entry" -max_total_time="$seconds" -print_final_stats=1 "$work/corpus-$entry"
