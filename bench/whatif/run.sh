#!/usr/bin/env bash
# rejuv whatif on the detector-bench trace suites (dev and held-back, 234 series of 10 s
# samples, 126 of them leaking) written as a fleet directory of primaries, with the built-in
# defaults: the rejuv policy against the best fixed period (fixed:auto).
#
# Writes bench/whatif/output.json (the JSON of the run) and, with a chromium on PATH,
# bench/whatif/report.png (the top of the HTML report). The fleet and the HTML report go to
# a temporary directory (65 MB and 4.6 MB). About four minutes of CPU.
# Usage: bench/whatif/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release -p rejuv -p rejuv-sim --bins
target="${CARGO_TARGET_DIR:-target}/release"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
"$target/detector-bench" --write-fleet "$tmp/suites"
set -x
"$target/rejuv" whatif --samples "$tmp/suites" --policy rejuv --policy fixed:auto \
    --output json --html "$tmp/report.html" > bench/whatif/output.json
set +x
cat bench/whatif/output.json
if command -v chromium > /dev/null; then
    chromium --headless --no-sandbox --disable-gpu --disable-background-networking \
        --disable-component-update --disable-sync --no-first-run --hide-scrollbars \
        --user-data-dir="$tmp/chromium" --window-size=980,1400 \
        --screenshot="$PWD/bench/whatif/report.png" "file://$tmp/report.html" 2> /dev/null
fi
