#!/usr/bin/env bash
# Runs every check and test of rejuv on a fresh machine: installs what the tests need
# (Debian packages), then formatting, lints and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."

export PATH="$PATH:/usr/sbin:/sbin"
need_pkgs=()
command -v haproxy >/dev/null || need_pkgs+=(haproxy)        # HAProxy adapter tests
command -v python3 >/dev/null || need_pkgs+=(python3)        # agent tests' tiny services
command -v h2load >/dev/null || need_pkgs+=(nghttp2-client)  # bench/demo/check.sh
if [ ${#need_pkgs[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "== installing ${need_pkgs[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
  else
    echo "== missing ${need_pkgs[*]} and not root: tests that need them will fail" >&2
  fi
fi

export CARGO_TERM_COLOR=never
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings
echo "== cargo test"
cargo test --workspace --no-fail-fast
