#!/usr/bin/env bash
# Re-create ingest/static/vendor from the npm registry at the versions pinned in ingest/web/package.json.
# The built files are committed (about 255 KB in all), so neither a build nor a network is needed to run or test the
# dashboard; run this only to change a version: edit package.json, run it, commit what it changed.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out="$here/../static/vendor"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
for name in leaflet leaflet.markercluster uplot; do
  version=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['dependencies'][sys.argv[2]])" \
    "$here/package.json" "$name")
  npm pack --silent "$name@$version" >/dev/null
  mkdir "$name" && tar xzf "$name-$version.tgz" -C "$name" --strip-components=1
done
cp leaflet/dist/leaflet.js leaflet/dist/leaflet.css uplot/dist/uPlot.iife.min.js uplot/dist/uPlot.min.css "$out/"
cp leaflet.markercluster/dist/leaflet.markercluster.js leaflet.markercluster/dist/MarkerCluster.css \
  leaflet.markercluster/dist/MarkerCluster.Default.css "$out/"
cp leaflet/LICENSE "$out/LICENSE.leaflet"
cp uplot/LICENSE "$out/LICENSE.uplot"
cp leaflet.markercluster/MIT-LICENCE.txt "$out/LICENSE.leaflet.markercluster"
echo "vendored leaflet, leaflet.markercluster and uplot (versions: ingest/web/package.json) into $out"
