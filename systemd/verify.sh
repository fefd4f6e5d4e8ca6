#!/usr/bin/env bash
# `systemd-analyze verify` on the project's units. The binaries they name are not installed on a build
# machine, so the units are copied with their paths to them (/usr/bin/elb-drain, the package's;
# /usr/local/bin/my-app in the examples) pointed at stand-in executables. A bare `elb-drain` is left as it
# is, and verify fails on it: systemd would run whichever copy comes first on its search path.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/bin" "$tmp/units"
for exe in elb-drain my-app; do printf '#!/bin/sh\nexit 0\n' > "$tmp/bin/$exe"; chmod +x "$tmp/bin/$exe"; done
for unit in "$here"/elb-drain.service "$here"/examples/*.service; do
  sed -e "s|/usr/local/bin/|$tmp/bin/|g" -e "s|/usr/bin/elb-drain|$tmp/bin/elb-drain|g" \
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
