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
command -v etcd >/dev/null || need_pkgs+=(etcd-server)       # etcd store and election tests
command -v etcdctl >/dev/null || need_pkgs+=(etcd-client)
command -v protoc >/dev/null || need_pkgs+=(protobuf-compiler) # builds the etcd client (feature etcd)
command -v prometheus >/dev/null || need_pkgs+=(prometheus)  # real scrape test, promtool
command -v chromium >/dev/null || need_pkgs+=(chromium)      # dashboard test in headless Chromium
command -v iptables >/dev/null || need_pkgs+=(iptables)      # fault suite: cut-offs, packet loss
command -v faketime >/dev/null || need_pkgs+=(faketime)      # fault suite: wall-clock jumps
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
cargo clippy --workspace --all-targets --all-features --quiet -- -D warnings
echo "== cargo test"
cargo test --workspace --all-features --no-fail-fast
