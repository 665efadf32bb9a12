#!/usr/bin/env bash
# Builds libshoal (the C ABI of Sources/CShoalABI/include/shoal.h, one .so with the Swift runtime
# linked in) and the Python package `shoal` as a wheel that carries it, and installs the wheel.
#   Tools/python.sh                 into the project's environment (.tools/venv)
#   Tools/python.sh --python PY     into the environment of that interpreter (PY -m pip install)
#   Tools/python.sh --lib           libshoal only: .build-libshoal/libshoal.so
# The wheel is left in .build-libshoal/wheels/ for installing elsewhere (pip install FILE.whl).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
python="$root/.tools/venv/bin/python"; lib_only=false
while [ $# -gt 0 ]; do
    case "$1" in
        --python) python="$2"; shift 2 ;;
        --lib) lib_only=true; shift ;;
        *) echo "python.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
out="$root/.build-libshoal"
# Its own build folder: these link flags (the runtime linked in, only the C ABI exported) would
# otherwise make every later build in .build relink.
swift build -c release --product shoalc --scratch-path "$out" -Xswiftc -static-stdlib \
    -Xlinker --version-script="$root/Sources/CShoalABI/libshoal.map" -Xlinker -soname=libshoal.so >/dev/null
cp "$out/release/libshoalc.so" "$out/libshoal.so"
strip --strip-unneeded "$out/libshoal.so"
echo "libshoal: $out/libshoal.so ($(du -h "$out/libshoal.so" | cut -f1); needs $(ldd "$out/libshoal.so" | awk '/=>/ {print $1}' | tr '\n' ' '))"
$lib_only && exit 0

[ -x "$python" ] || command -v "$python" >/dev/null || { echo "python.sh: no interpreter $python (run Tools/install-deps.sh)" >&2; exit 1; }
"$python" -m pip install -q --disable-pip-version-check setuptools wheel
cp "$out/libshoal.so" "$root/python/shoal/libshoal.so"
rm -rf "$out/wheels" "$root/python/build"
"$python" -m pip wheel -q --disable-pip-version-check --no-deps --no-build-isolation -w "$out/wheels" "$root/python"
rm -rf "$root/python/build" "$root/python/"*.egg-info
wheel=$(ls "$out"/wheels/shoal-*.whl)
"$python" -m pip install -q --disable-pip-version-check --force-reinstall --no-deps "$wheel"
echo "python: installed $(basename "$wheel") into $("$python" -c 'import sys; print(sys.prefix)')"
