#!/usr/bin/env bash
# Builds `rejuv-agent`, the small agent binary installed beside `rejuv` on every server:
#
#   bash scripts/build-agent.sh                  # → target/agent/rejuv-agent
#   bash scripts/build-agent.sh --record-order   # first records deploy/agent/symbol-order.txt
#
# Built for a small resident size (bench/RESULTS.md, "The agent's own cost beside node_exporter"):
# - profile `agent` (Cargo.toml): opt-level "s", fat LTO, one codegen unit;
# - glibc linked statically (`crt-static`): no pages of libc, libm, libgcc_s and ld.so of its
#   own. User, group and host names still resolve through NSS: `files` and `dns` are built in;
#   other NSS modules (LDAP, sssd, systemd) load only where the server's glibc is the version
#   the agent was built with, so build it on the distribution you deploy to. `DYNAMIC=1` builds
#   it linked dynamically instead;
# - on x86_64 Linux (where Rust links with LLD), its code laid out in the order an idle agent
#   runs it: the functions named in deploy/agent/symbol-order.txt first and together
#   (crates/rejuv/build.rs). The kernel maps code in 64 KB runs around each page fault, so code
#   that runs kept apart from code that does not leaves fewer pages resident.
#
# --record-order rebuilds that list from a run of the agent under valgrind's callgrind (one
# server, no instance, one reading a second, its API asked as a controller and a Prometheus
# would for RECORD_SECONDS, default 20): every function that ran, by mangled name. Names that a
# later change of the code renames are skipped by the linker, so an old list still works, only
# less well; record it again after large changes.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
target="${CARGO_TARGET_DIR:-$root/target}"
order="$root/deploy/agent/symbol-order.txt"
triple="$(rustc -vV | sed -n 's/^host: //p')"
record=false
for arg in "$@"; do
    case "$arg" in
        --record-order) record=true ;;
        -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
        *) echo "unknown argument '$arg' (want --record-order)" >&2; exit 2 ;;
    esac
done

build() { # ORDER_FILE (empty: none) → prints the built binary's path
    local flags="${RUSTFLAGS:-}"
    [ "${DYNAMIC:-0}" = 1 ] || flags="$flags -C target-feature=+crt-static"
    REJUV_AGENT_SYMBOL_ORDER="$1" RUSTFLAGS="$flags" \
        cargo build --profile agent --target "$triple" -p rejuv --bin rejuv-agent >&2 || return 1
    echo "$target/$triple/agent/rejuv-agent"
}

use_order=""
if [ "$triple" = x86_64-unknown-linux-gnu ]; then
    use_order="$order"
else
    echo "note: $triple: code order not applied (it needs LLD, the linker of x86_64 Linux)" >&2
fi

if $record; then
    command -v valgrind >/dev/null || { echo "--record-order needs valgrind (apt-get install valgrind)" >&2; exit 2; }
    [ -n "$use_order" ] || { echo "--record-order: no code order on $triple" >&2; exit 2; }
    bin="$(build "")"
    work="$(mktemp -d /tmp/rejuv-agent-order.XXXXXX)"
    pid=""
    cleanup() {
        if [ -n "$pid" ]; then
            kill -KILL -- "-$pid" 2>/dev/null || true
        fi
        rm -rf "$work"
    }
    trap cleanup EXIT
    # shellcheck source=idle-agent.sh
    . "$root/scripts/idle-agent.sh"
    port="$(free_port)"
    idle_agent_files "$work" "$port" 1s
    RUST_LOG=warn setsid valgrind --tool=callgrind --demangle=no \
        --callgrind-out-file="$work/callgrind.out" "$bin" --config "$work/rejuv.toml" --server s1 \
        >"$work/agent.log" 2>&1 &
    pid=$!
    auth=(-H "Authorization: Bearer $(cat "$work/agent.token")")
    deadline=$((SECONDS + 120))
    until curl -fsS -o /dev/null "${auth[@]}" "http://127.0.0.1:$port/metrics" 2>/dev/null; do
        kill -0 "$pid" 2>/dev/null || { tail -20 "$work/agent.log" >&2; exit 1; }
        (( SECONDS < deadline )) || { echo "the agent did not answer within 120 s" >&2; exit 1; }
        sleep 0.5
    done
    for _ in $(seq "${RECORD_SECONDS:-20}"); do
        for path in /metrics /v1/state /v1/samples /healthz; do
            curl -fsS -o /dev/null "${auth[@]}" "http://127.0.0.1:$port$path"
        done
        sleep 1
    done
    kill -TERM -- "-$pid"
    wait "$pid" || true
    pid=""
    mkdir -p "$(dirname "$order")"
    # `fn=(N) NAME` and `cfn=(N) NAME` name each function once; `'N` marks a recursion depth.
    sed -n -E "s/^c?fn=\([0-9]+\) (.*)$/\1/p" "$work/callgrind.out" \
        | sed -E "s/'[0-9]+$//" | grep -v -e '^0x' -e '^(' | LC_ALL=C sort -u > "$order"
    echo "recorded $(wc -l < "$order") functions in ${order#"$root"/}" >&2
fi

bin="$(build "$use_order")"
mkdir -p "$target/agent"
cp "$bin" "$target/agent/rejuv-agent.tmp"
mv "$target/agent/rejuv-agent.tmp" "$target/agent/rejuv-agent"
echo "built $target/agent/rejuv-agent ($(stat -c %s "$target/agent/rejuv-agent") bytes; from $bin)"
