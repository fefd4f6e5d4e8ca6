#!/usr/bin/env bash
# `systemd-analyze verify` on the project's units. The binaries they name are not installed on a build
# machine, so the units are copied with `elb-drain` (named without a directory: systemd finds it in
# /usr/local/bin or /usr/bin) and their /usr/local/bin paths pointed at stand-in executables.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/bin" "$tmp/units"
for exe in elb-drain my-app; do printf '#!/bin/sh\nexit 0\n' > "$tmp/bin/$exe"; chmod +x "$tmp/bin/$exe"; done
for unit in "$here"/elb-drain.service "$here"/examples/*.service; do
  sed -e "s|^\(Exec[A-Za-z]*=[-+!@:]*\)elb-drain |\1$tmp/bin/elb-drain |" -e "s|/usr/local/bin/|$tmp/bin/|g" \
    "$unit" > "$tmp/units/$(basename "$unit")"
done
cd "$tmp/units"
out=$(systemd-analyze verify --man=no ./*.service 2>&1 || true)
if [ -n "$out" ]; then
  echo "$out"
  echo "systemd-analyze verify: problems found"
  exit 1
fi
echo "systemd-analyze verify: $(ls ./*.service | wc -l) units clean"
