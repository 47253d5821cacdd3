#!/usr/bin/env bash
# Installs what the project needs on a fresh Debian 12 machine of this kind.
#   setup.sh build   the eBPF toolchain only
#   setup.sh test    that, plus the real peers the tests and the lab run (default)
#   setup.sh fuzz    what `cargo xtask fuzz` needs: cargo-fuzz for the rustup nightly
#                    toolchain, and a C++ compiler for libFuzzer
# Idempotent: each step checks first, so a second run is quick.
set -euo pipefail
what=${1:-test}
case "$what" in build|test|fuzz) ;; *) echo "usage: $0 [build|test|fuzz]" >&2; exit 2;; esac

if [ "$what" = fuzz ]; then
  # libFuzzer itself is C++, built by the libfuzzer-sys crate.
  if ! command -v c++ >/dev/null 2>&1; then
    echo "setup: installing g++ (libFuzzer is built from C++ sources)" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >&2
    apt-get install -y -q --no-install-recommends g++ >&2
  fi
  # cargo-fuzz drives the nightly toolchain that is on the machine (rustup cannot download
  # one here); its -Z flags and the sanitizer-coverage pass need nightly.
  if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    echo "setup: no rustup nightly toolchain: \`rustup toolchain install nightly\` first" >&2
    exit 1
  fi
  if ! rustup run nightly cargo fuzz --version >/dev/null 2>&1; then
    echo "setup: building cargo-fuzz" >&2
    cargo install --locked cargo-fuzz@0.13.2
  fi
  echo "setup: fuzz done" >&2
  exit 0
fi

need_apt=()
want() { dpkg -s "$1" >/dev/null 2>&1 || need_apt+=("$1"); }

# Debian's rustc/cargo 1.96 ship the library sources that `-Z build-std=core` needs for the
# bpfel target (rustup here has no rust-src). llvm-22-dev is only a recommendation of
# rust-web-llvm, so name it: bpf-linker links against it.
for p in rustc-web rust-web-src cargo-web llvm-22-dev libpolly-22-dev zlib1g-dev libzstd-dev; do
  want "$p"
done
if [ "$what" = test ]; then
  # dnsmasq-base and python3-aiosmtpd: the DNS, UDP and SMTP checkers' peers (binaries only, no
  # service started); openssl makes the SSL_GET test's certificates; bird2: the routing daemon
  # of `[announce]`'s nodes and of the ECMP test's upstream router.
  for p in iproute2 ethtool curl tcpdump python3 nginx-light keepalived iputils-ping util-linux bpftool \
      dnsmasq-base python3-aiosmtpd openssl bird2; do
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

# nginx, keepalived and BIRD are run by the tests inside namespaces, never as system services.
for svc in nginx keepalived bird; do
  systemctl disable --now "$svc" >/dev/null 2>&1 || true
done
echo "setup: done" >&2
