#!/usr/bin/env bash
# The project's test command: formatting, lints, then every test in the workspace.
# Installs what the tests need that a fresh machine may lack: C and C++ compilers (CPU backend,
# CUDA emulator), NVRTC 13 and 12 from NVIDIA's wheels in a local virtualenv (CUDA tests),
# Mesa's lavapipe with the Vulkan loader (the wgpu tests run on it), the OpenAI Python client
# in a local virtualenv (the `kiln serve` tests), and the servers of the remote-cache tests
# (redis-server, moto's S3 server, distccd), which it starts for the run and stops afterwards.
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
# Servers for the remote-cache and distcc tests, real ones on loopback: redis-server and distccd
# (Debian packages), moto's S3 server (PyPI, in a local virtualenv). Started on free ports for
# this run, named to the tests by KILN_TEST_* (and the standard AWS_* variables for S3), and
# stopped on exit, whether the tests pass or not.
MOTO=5.2.5
need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v distccd >/dev/null 2>&1 || need+=(distcc)
command -v python3 >/dev/null 2>&1 || need+=(python3 python3-venv)
if ((${#need[@]})); then
  echo "installing ${need[*]} for the remote-cache and distcc tests" >&2
  as_root apt-get update -qq && DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${need[@]}"
fi
moto_venv=.venv-moto
if ! "$moto_venv/bin/python" -c "import importlib.metadata as m; assert m.version('moto') == '$MOTO'" 2>/dev/null; then
  echo "installing moto[server]==$MOTO (an S3 server) into $moto_venv" >&2
  python3 -m venv "$moto_venv"
  "$moto_venv/bin/pip" install -q "moto[server]==$MOTO"
fi
# The official OpenAI Python client (PyPI, in a local virtualenv) drives `kiln serve` in
# crates/kiln-cli/tests/serve.rs.
OPENAI=3.63.0
openai_venv=.venv-openai
if ! "$openai_venv/bin/python" -c "import importlib.metadata as m; assert m.version('openai') == '$OPENAI'" 2>/dev/null; then
  echo "installing openai==$OPENAI (the OpenAI Python client) into $openai_venv" >&2
  python3 -m venv "$openai_venv"
  "$openai_venv/bin/pip" install -q "openai==$OPENAI"
fi
export KILN_TEST_OPENAI_PYTHON="$PWD/$openai_venv/bin/python"
services=$(mktemp -d /tmp/kiln-test-services.XXXXXX)
# As root, distccd drops to the distccd user, which must write its log here.
chmod 0777 "$services"
pids=()
stop_services() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$services"
}
trap stop_services EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_port() { # port, what
  for _ in $(seq 600); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "$2 did not start on port $1; its log:" >&2
  cat "$services"/*.log >&2 || true
  exit 1
}
redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no --daemonize no \
  --dir "$services" --logfile "$services/redis.log" </dev/null >/dev/null 2>&1 &
pids+=($!)
s3_port=$(free_port)
"$moto_venv/bin/moto_server" -H 127.0.0.1 -p "$s3_port" </dev/null >"$services/moto.log" 2>&1 &
pids+=($!)
distcc_port=$(free_port)
# --no-detach keeps the daemon our child (its PID is $!); --allow is required.
distccd --daemon --no-detach --listen 127.0.0.1 --port "$distcc_port" --allow 127.0.0.1/32 \
  --jobs 4 --log-file "$services/distccd.log" --log-level info </dev/null >/dev/null 2>&1 &
pids+=($!)
wait_port "$redis_port" redis-server
wait_port "$s3_port" "moto S3 server"
wait_port "$distcc_port" distccd
# moto takes an unsigned bucket creation.
python3 -c "import urllib.request as u; u.urlopen(u.Request('http://127.0.0.1:$s3_port/kiln-test', method='PUT'))"
export KILN_TEST_SERVICES=1
export KILN_TEST_REDIS_URL="redis://127.0.0.1:$redis_port/0"
export KILN_TEST_S3_URL="s3://kiln-test"
export KILN_TEST_DISTCC_HOSTS="127.0.0.1:$distcc_port/4"
export KILN_TEST_DISTCCD_LOG="$services/distccd.log"
export AWS_ENDPOINT_URL_S3="http://127.0.0.1:$s3_port" AWS_REGION=us-east-1
export AWS_ACCESS_KEY_ID=kiln-test AWS_SECRET_ACCESS_KEY=kiln-test-secret
unset KILN_REMOTE_CACHE

cargo fmt --all --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
# The fuzz targets live outside the workspace (cargo-fuzz builds them with nightly's
# sanitizers); checking them on stable keeps an API change from breaking them unnoticed.
cargo check --manifest-path fuzz/Cargo.toml --bins --quiet
cargo test --workspace --release --no-fail-fast
