#!/usr/bin/env bash
# Create .venv and install the project; a no-op when already up to date.
#
# Which torch build:
#   cpu  (default)  torch==2.13.0 as pinned below.
#   cuda            torch==2.13.0 from PyPI's default build (CUDA) with the triton release that build
#                   requires and xformers (wheels for torch >= 2.10). Chosen when an NVIDIA driver is
#                   present (nvidia-smi on PATH or /proc/driver/nvidia/version), or forced with
#                   VALUE_ROUTING_DEVICE=cuda; VALUE_ROUTING_DEVICE=cpu forces the CPU pin.
#   VALUE_ROUTING_TORCH_INDEX=URL installs torch, triton and xformers from that wheel index instead
#                   (e.g. PyTorch's index for one CUDA version, when xformers reports it cannot load).
# Switching between builds reinstalls torch/triton/xformers (the stamp records the build).
# VALUE_ROUTING_SETUP_DRY_RUN=1 prints the device and the commands instead of running them.
# After a CUDA install, check the GPU paths with: .venv/bin/python -m recipes.tools.doctor
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_VERSION=2.13.0
TRITON_CUDA_VERSION=3.7.1  # the version torch 2.13.0's CUDA wheel requires (its METADATA)
XFORMERS_VERSION=0.0.35    # built on the torch >= 2.10 stable ABI: one wheel for later torch releases
EXTRAS="dev,triton,xformers,docs,hf,eval,bench"

dry_run=${VALUE_ROUTING_SETUP_DRY_RUN:-0}
run() {
  if [ "$dry_run" = 1 ]; then echo "+ $*"; else "$@"; fi
}

detect_device() {
  case "${VALUE_ROUTING_DEVICE:-auto}" in
    cpu | cuda) echo "$VALUE_ROUTING_DEVICE (VALUE_ROUTING_DEVICE)" ;;
    auto)
      if command -v nvidia-smi >/dev/null 2>&1; then echo "cuda (nvidia-smi found)"
      elif [ -r /proc/driver/nvidia/version ]; then echo "cuda (/proc/driver/nvidia/version found)"
      else echo "cpu (no NVIDIA driver found)"
      fi ;;
    *)
      echo "setup: VALUE_ROUTING_DEVICE must be one of cpu, cuda, auto; got '$VALUE_ROUTING_DEVICE'" >&2
      return 2 ;;
  esac
}
choice=$(detect_device)
device=${choice%% *}
echo "setup: torch for $choice" >&2

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  run "$PY" -m venv .venv
fi
pip=(.venv/bin/python -m pip)
stamp=.venv/.value_routing-installed
build="$device ${VALUE_ROUTING_TORCH_INDEX:-}"
want="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1) $build"
have=$(cat "$stamp" 2>/dev/null || true)
if [ "$have" != "$want" ]; then
  run "${pip[@]}" install --quiet --upgrade pip
  had_build="cpu "  # stamps from before the build was recorded were all cpu
  case "$have" in *" "*) had_build=${have#* } ;; esac
  if [ -n "$have" ] && [ "$had_build" != "$build" ]; then
    # The other build satisfies the same version pins, so pip would keep it: remove it first.
    run "${pip[@]}" uninstall --quiet -y torch triton xformers
  fi
  index=()
  if [ -n "${VALUE_ROUTING_TORCH_INDEX:-}" ]; then index=(--index-url "$VALUE_ROUTING_TORCH_INDEX"); fi
  if [ "$device" = cuda ]; then
    run "${pip[@]}" install --quiet ${index[@]+"${index[@]}"} "torch==$TORCH_VERSION" "triton==$TRITON_CUDA_VERSION" \
      "xformers==$XFORMERS_VERSION"
  else
    # Pinned first, so the extras below cannot pull another torch release.
    run "${pip[@]}" install --quiet ${index[@]+"${index[@]}"} "torch==$TORCH_VERSION"
  fi
  run "${pip[@]}" install --quiet -e ".[$EXTRAS]"
  if [ "$dry_run" != 1 ]; then echo "$want" > "$stamp"; fi
fi
if [ "$dry_run" = 1 ]; then exit 0; fi
# Headless Chromium renders the built docs in tests/test_docs.py (Debian's package, as root).
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing Debian's chromium for the docs test" >&2
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
  else
    echo "setup: chromium not found (needs root + apt-get); tests/test_docs.py will skip its browser check" >&2
  fi
fi
