#!/usr/bin/env bash
# Vendors the dashboard's chart library (Apache ECharts, pinned) from the npm registry into
# webui/static/vendor/echarts/, with its licence and notice. The result is committed, so
# neither CI nor users need npm or a network: run this only to change the pinned version.
#
#   scripts/vendor_charts.sh            # the pinned version below
#   ECHARTS_VERSION=6.1.0 scripts/vendor_charts.sh
set -euo pipefail
VERSION="${ECHARTS_VERSION:-6.1.0}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DEST="$ROOT/webui/static/vendor/echarts"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
cd "$TMP"
npm pack --silent "echarts@$VERSION" >/dev/null
tar -xzf "echarts-$VERSION.tgz"
mkdir -p "$DEST"
cp package/dist/echarts.min.js "$DEST/echarts.min.js"
cp package/LICENSE "$DEST/LICENSE"
[ -f package/NOTICE ] && cp package/NOTICE "$DEST/NOTICE"
# ECharts bundles ZRender (BSD-3-Clause) into dist/: ship its licence too.
ZR="$(node -e "console.log(require('./package/package.json').dependencies.zrender)")"
npm pack --silent "zrender@$ZR" >/dev/null
mkdir zr && tar -xzf zrender-*.tgz -C zr
cp zr/package/LICENSE "$DEST/LICENSE.zrender"
{
    echo "echarts $VERSION (npm), dist/echarts.min.js"
    echo "zrender $ZR (bundled inside echarts.min.js)"
    echo "sha256 $(sha256sum "$DEST/echarts.min.js" | cut -d' ' -f1)  echarts.min.js"
    echo "fetched by scripts/vendor_charts.sh"
} > "$DEST/VERSION"
echo "vendored echarts $VERSION into $DEST"
cat "$DEST/VERSION"
