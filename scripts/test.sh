#!/usr/bin/env bash
# The project's test command: formatting, lints, then every test in the workspace.
# Installs what the tests need that a fresh machine may lack: C and C++ compilers (CPU backend,
# CUDA emulator), NVRTC 13 and 12 from NVIDIA's wheels in a local virtualenv (CUDA tests), and
# Mesa's lavapipe with the Vulkan loader (the wgpu tests run on it).
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if ! command -v "${CC:-cc}" >/dev/null 2>&1 || ! command -v "${CXX:-g++}" >/dev/null 2>&1; then
  echo "installing C and C++ compilers (gcc, g++) for the CPU backend and the CUDA emulator" >&2
  as_root apt-get update -qq && as_root apt-get install -y -qq gcc g++
fi

# NVRTC for the CUDA compile tests, from PyPI into a local virtualenv: 13.0 (what cudarc's
# bindings are pinned to, `cuda-13000`) is the one kiln uses; 12.8 checks that NVRTC 12 works too.
NVRTC13=13.0.88
NVRTC12=12.8.93
venv=.venv-nvrtc
have_wheels() {
  "$venv/bin/python" -c "import importlib.metadata as m; \
assert m.version('nvidia-cuda-nvrtc') == '$NVRTC13' and m.version('nvidia-cuda-nvrtc-cu12') == '$NVRTC12'" 2>/dev/null
}
if [ ! -x "$venv/bin/python" ] || ! have_wheels; then
  echo "installing NVRTC (nvidia-cuda-nvrtc==$NVRTC13, nvidia-cuda-nvrtc-cu12==$NVRTC12) into $venv" >&2
  if ! python3 -m venv "$venv" 2>/dev/null; then
    as_root apt-get update -qq && as_root apt-get install -y -qq python3-venv
    python3 -m venv "$venv"
  fi
  "$venv/bin/pip" install -q "nvidia-cuda-nvrtc==$NVRTC13" "nvidia-cuda-nvrtc-cu12==$NVRTC12"
fi
nvidia="$("$venv/bin/python" -c 'import nvidia; print(list(nvidia.__path__)[0])')"
export KILN_NVRTC_LIB="$nvidia/cu13/lib/libnvrtc.so.13"
export KILN_NVRTC12_LIB="$nvidia/cuda_nvrtc/lib/libnvrtc.so.12"

# lavapipe: Mesa's Vulkan driver on the CPU, so the wgpu backend's tests run without a GPU.
arch="$(uname -m)"
lavapipe="/usr/share/vulkan/icd.d/lvp_icd.$arch.json"
if [ ! -f "$lavapipe" ] || ! ldconfig -p 2>/dev/null | grep 'libvulkan\.so\.1 ' >/dev/null; then
  echo "installing Mesa's lavapipe and the Vulkan loader (mesa-vulkan-drivers, libvulkan1) for the wgpu tests" >&2
  as_root apt-get update -qq && as_root apt-get install -y -qq mesa-vulkan-drivers libvulkan1
fi
# Only lavapipe (not whatever GPU driver the machine has), through Vulkan; the tests assert
# that the adapter is a Vulkan one and fail, not skip, without it (KILN_REQUIRE_WGPU).
export VK_DRIVER_FILES="$lavapipe"
export WGPU_BACKEND=vulkan
export KILN_REQUIRE_WGPU=1
# The Vulkan loader wants a private runtime dir (a harmless warning otherwise).
if [ -z "${XDG_RUNTIME_DIR:-}" ]; then
  XDG_RUNTIME_DIR="$(mktemp -d)"
  export XDG_RUNTIME_DIR
fi
# Mesa's shader cache, kept with the build, not in the user's ~/.cache.
export MESA_SHADER_CACHE_DIR="${CARGO_TARGET_DIR:-$PWD/target}/mesa-shader-cache"

cargo fmt --all --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
cargo test --workspace --release
