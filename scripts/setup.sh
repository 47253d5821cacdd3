#!/usr/bin/env bash
# Installs what the project needs on a fresh Debian 12 machine of this kind.
#   setup.sh build   the eBPF toolchain only
#   setup.sh test    that, plus the real peers the tests and the lab run (default)
# Idempotent: each step checks first, so a second run is quick.
set -euo pipefail
what=${1:-test}
case "$what" in build|test) ;; *) echo "usage: $0 [build|test]" >&2; exit 2;; esac

need_apt=()
want() { dpkg -s "$1" >/dev/null 2>&1 || need_apt+=("$1"); }

# Debian's rustc/cargo 1.96 ship the library sources that `-Z build-std=core` needs for the
# bpfel target (rustup here has no rust-src). llvm-22-dev is only a recommendation of
# rust-web-llvm, so name it: bpf-linker links against it.
for p in rustc-web rust-web-src cargo-web llvm-22-dev libpolly-22-dev zlib1g-dev libzstd-dev; do
  want "$p"
done
if [ "$what" = test ]; then
  for p in iproute2 ethtool curl tcpdump python3 nginx-light keepalived iputils-ping; do
    want "$p"
  done
fi

if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${need_apt[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >&2
  apt-get install -y -q --no-install-recommends "${need_apt[@]}" >&2
fi

# bpf-linker 0.13 against Debian's LLVM 22 (its default feature wants LLVM 23).
if ! command -v bpf-linker >/dev/null 2>&1 && [ ! -x "$HOME/.cargo/bin/bpf-linker" ]; then
  echo "setup: building bpf-linker 0.13.0 against LLVM 22" >&2
  LLVM_PREFIX=/usr/lib/llvm-22 cargo install --locked bpf-linker@0.13.0 \
    --no-default-features --features llvm-22
fi

# nginx and keepalived are run by the tests inside namespaces, never as system services.
for svc in nginx keepalived; do
  systemctl disable --now "$svc" >/dev/null 2>&1 || true
done
echo "setup: done" >&2
