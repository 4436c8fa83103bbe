#!/usr/bin/env bash
# Refresh the dashboard's chart library (uPlot, MIT) from the npm registry into
# supervisor/static/. The files are committed, so serving never needs npm; run this
# only to move to another version: scripts/vendor-uplot.sh [VERSION] (default 1.6.32).
set -euo pipefail
cd "$(dirname "$0")/.."
version="${1:-1.6.32}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "uplot@${version}" >/dev/null && tar xzf "uplot-${version}.tgz")
cp "$tmp/package/dist/uPlot.iife.min.js" supervisor/static/uplot.iife.min.js
cp "$tmp/package/dist/uPlot.min.css" supervisor/static/uplot.min.css
cp "$tmp/package/LICENSE" supervisor/static/uplot.LICENSE
echo "uPlot ${version} vendored into supervisor/static/"
