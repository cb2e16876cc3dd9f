#!/usr/bin/env bash
# Packs .gpu-kit/ for scripts/gpu-check.sh on a GPU machine without a Rust toolchain or network
# (the `device` machine): the release `kiln` binary, the CUDA test binary and the wgpu fixture
# tests built here, the Vulkan loader's Debian packages, and the fixtures the GPU tests read.
# .gpu-kit/ is git-ignored; name it in the device run's `carry` (the device tool sends the
# checkout the session started in: build the kit there).
set -euo pipefail
cd "$(dirname "$0")/.."
kit=.gpu-kit
rm -rf "$kit"
mkdir -p "$kit/fixtures"

cargo build --release -p kiln-cli
# A test binary of `crate` (file tests/`name`.rs), built in release, its path printed.
test_binary() {
  cargo test --release -p "$1" --test "$2" --no-run --message-format=json |
    python3 -c 'import json, sys
for m in map(json.loads, sys.stdin):
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == sys.argv[1]:
        print(m["executable"])' "$2"
}
cp target/release/kiln "$kit/kiln"
cp "$(test_binary kiln-cuda cuda)" "$kit/cuda-tests"
cp "$(test_binary kiln-wgpu fixtures)" "$kit/wgpu-fixtures"
strip "$kit/kiln" "$kit/cuda-tests" "$kit/wgpu-fixtures"

# The Vulkan loader (and the GL dispatch libraries NVIDIA's Vulkan driver loads), which the
# GPU machine's image lacks: Debian's packages, unpacked there by gpu-check.sh's wgpu phase
# (the device tool's README: /work/.library/device/README.md).
mkdir -p "$kit/debs"
apt_opts=(-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/kiln-gpu-kit-apt)
mkdir -p /tmp/kiln-gpu-kit-apt/partial
apt-get "${apt_opts[@]}" update -qq
# (apt warns that it downloads as root into a folder its own user cannot write: harmless)
(cd "$kit/debs" && apt-get "${apt_opts[@]}" download libvulkan1 libglvnd0 libegl1 libgl1 libglx0 \
  2> >(grep -v 'Download is performed unsandboxed' >&2))
ls "$kit"/debs/libvulkan1_*.deb >/dev/null

fixtures=${KILN_FIXTURES:-tests/fixtures}
# README.md too: the tests know the fixtures' folder by it (kiln_models::testing::fixtures).
for f in README.md tiny-qwen3 tiny-qwen3-sharded tiny-qwen3-bf16; do
  cp -r "$fixtures/$f" "$kit/fixtures/"
done
git rev-parse HEAD >"$kit/commit"
du -sh "$kit"
