#!/usr/bin/env bash
# Build llama.cpp once per machine and install it into a venv (called by `make install`).
#
#   scripts/llama-cpp.sh VENV
#
# What it builds, from the llama.cpp source that llama-cpp-python's sdist vendors (so the
# Python binding and the tools are the same llama.cpp commit):
#   $CACHE/bin/  llama-server (OpenAI-compatible server: parallel slots, continuous batching),
#                llama-quantize, llama-imatrix, llama-perplexity, llama-bench, llama-completion,
#                llama-tokenize
#   $CACHE/lib/  libllama, libggml*, libmtmd (shared, RPATH $ORIGIN), used by the tools
#   $CACHE/wheel/llama_cpp_python-VERSION-py3-none-linux_x86_64.whl: the Python binding
#                carrying those same libraries (its own CMake build is switched off: nothing
#                is compiled twice); `pip install` it into any venv.
# $CACHE is ~/.cache/llm4all/llama.cpp/VERSION-HASH ($LLM4ALL_CACHE replaces ~/.cache/llm4all),
# HASH covering the CMake flags, the compiler and the CPU's flags (GGML_NATIVE=ON compiles for
# this CPU). A second venv, worktree or rerun reuses it; concurrent installs wait on a lock.
# Then the venv gets the wheel and symlinks VENV/bin/llama-* → $CACHE/bin/.
set -euo pipefail

VENV=${1:?usage: scripts/llama-cpp.sh VENV}
VERSION=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
TOOLS="llama-server llama-quantize llama-imatrix llama-perplexity llama-bench llama-completion llama-tokenize"
GENERATOR=$(command -v ninja >/dev/null && echo Ninja || echo "Unix Makefiles")
CMAKE_FLAGS=(
  -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON -DGGML_NATIVE=ON
  -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF
  -DLLAMA_BUILD_APP=OFF
  # no network at build time: no web UI download, no curl/https model fetching
  -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF
  # relocatable: tools find lib/ beside bin/, libraries find each other
  -DCMAKE_BUILD_WITH_INSTALL_RPATH=ON '-DCMAKE_INSTALL_RPATH=$ORIGIN/../lib;$ORIGIN'
)
ROOT=${LLM4ALL_CACHE:-$HOME/.cache/llm4all}/llama.cpp
HASH=$( { echo "$VERSION ${CMAKE_FLAGS[*]} $TOOLS"; cc --version | head -1; c++ --version | head -1;
          grep -m1 '^flags' /proc/cpuinfo; } | sha256sum | cut -c1-12)
CACHE=$ROOT/$VERSION-$HASH

build() {  # → $CACHE/{bin,lib} (built in $CACHE.tmp-PID, renamed when complete)
  local work=$CACHE.tmp-$$ start=$SECONDS
  rm -rf "$work" && mkdir -p "$work"/{bin,lib,src}
  echo "llama.cpp: building llama-cpp-python $VERSION's llama.cpp into $CACHE (5-25 min on 2 cores, depending on their load)"
  sdist "$work/src"
  trap 'echo "llama.cpp: build failed; last lines of $work/build.log:"; tail -20 "$work/build.log"' ERR
  cmake -S "$work/src/llama_cpp_python-$VERSION/vendor/llama.cpp" -B "$work/build" -G "$GENERATOR" \
    "${CMAKE_FLAGS[@]}" > "$work/build.log" 2>&1
  # shellcheck disable=SC2086
  cmake --build "$work/build" -j "$(nproc)" --target $TOOLS >> "$work/build.log" 2>&1
  trap - ERR
  for tool in $TOOLS; do cp "$work/build/bin/$tool" "$work/bin/"; done
  cp -a "$work"/build/bin/lib*.so* "$work/lib/"
  rm -rf "$work/build" "$work/src"
  echo "{\"llama_cpp_python\": \"$VERSION\", \"cmake_flags\": \"${CMAKE_FLAGS[*]}\"," \
       "\"build_seconds\": $((SECONDS - start)), \"built\": \"$(date -Iseconds)\"}" > "$work/BUILD_INFO.json"
  mv "$work" "$CACHE"
  echo "llama.cpp: built in $((SECONDS - start)) s"
}

sdist() {  # the llama-cpp-python sdist, unpacked into $1
  "$VENV/bin/python" -m pip download -q --no-deps --no-binary :all: -d "$1" "llama-cpp-python==$VERSION"
  tar xzf "$1/llama_cpp_python-$VERSION.tar.gz" -C "$1"
}

build_wheel() {  # → $CACHE/wheel/: the binding, its own CMake build off, our libraries inside it
  local work=$CACHE/wheel.tmp-$$
  rm -rf "$work" && mkdir -p "$work"
  sdist "$work"
  local src=$work/llama_cpp_python-$VERSION
  # llama_cpp loads lib/libllama.so, libggml.so, libmtmd.so; they load their sonames (.so.0)
  # from $ORIGIN. Real files: a wheel keeps no symlinks.
  mkdir -p "$src/llama_cpp/lib"
  for lib in llama ggml mtmd; do cp -L "$CACHE/lib/lib$lib.so" "$src/llama_cpp/lib/"; done
  for lib in llama ggml ggml-base ggml-cpu mtmd; do cp -L "$CACHE/lib/lib$lib.so.0" "$src/llama_cpp/lib/"; done
  rm -f "$src/.gitignore"  # it ignores lib/, which scikit-build-core would then leave out
  CMAKE_ARGS="-DLLAMA_BUILD=OFF -DLLAVA_BUILD=OFF" \
    "$VENV/bin/python" -m pip wheel -q --no-deps -w "$work/out" "$src" > "$work.log" 2>&1 \
    || { echo "llama.cpp: building the wheel failed:"; tail -20 "$work.log"; exit 1; }
  rm -rf "$CACHE/wheel" && mv "$work/out" "$CACHE/wheel" && rm -rf "$work" "$work.log"
}

if ! command -v cmake >/dev/null || ! command -v c++ >/dev/null; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq cmake ninja-build g++ >/dev/null
  else
    echo "llama.cpp: building it needs cmake and a C++ compiler (apt-get install cmake ninja-build g++)"; exit 1
  fi
fi
mkdir -p "$ROOT"
exec 9> "$ROOT/.lock"
flock 9  # another install building the same cache: wait for it, then reuse its result
[ -f "$CACHE/BUILD_INFO.json" ] || build
ls "$CACHE"/wheel/llama_cpp_python-*.whl > /dev/null 2>&1 || build_wheel
flock -u 9

"$VENV/bin/python" -m pip install -q --force-reinstall --no-deps "$CACHE"/wheel/llama_cpp_python-*.whl
"$VENV/bin/python" -m pip install -q "$CACHE"/wheel/llama_cpp_python-*.whl  # its small deps
for tool in $TOOLS; do ln -sf "$CACHE/bin/$tool" "$VENV/bin/$tool"; done
"$VENV/bin/llama-server" --version > /dev/null 2>&1 \
  || { echo "llama.cpp: $VENV/bin/llama-server does not run; remove $CACHE and rerun"; exit 1; }
"$VENV/bin/python" -c "import llama_cpp; llama_cpp.llama_backend_init()"
echo "llama.cpp: $CACHE installed into $VENV"
