#!/usr/bin/env bash
# Puts the pinned official Python SDK (tests/sdk/requirements.txt) into a venv for tests/sdk_compat.rs.
#
# Exit 0: the venv imports the SDK at the pinned versions (installed now or already there).
# Exit 3: the install failed and the package index cannot be reached at all: the only case in which the
#         wire test may be skipped (.ci/run says so loudly).
# Exit 1: anything else (no venv could be made, the install failed although the index answers, the
#         versions are wrong afterwards): a real failure, never a skip.
#
# Usage: tests/sdk/setup-venv.sh [VENV_DIR]   (default: .venv at the repository root)
set -uo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
venv="${1:-$root/.venv}"
req="$root/tests/sdk/requirements.txt"
py="$venv/bin/python"

# Whether the venv has exactly the pinned versions, and they import.
pinned_ok() { "$py" "$root/tests/sdk/pins.py"; }

if [ -x "$py" ] && pinned_ok; then
  echo "SDK: $venv already has the pinned versions"
  exit 0
fi
if [ ! -x "$py" ]; then
  if ! python3 -m venv "$venv"; then
    echo "ERROR: could not create the venv $venv (python3 -m venv)" >&2
    exit 1
  fi
fi
pip=("$py" -m pip --disable-pip-version-check --timeout 20 --retries 2)
if "${pip[@]}" install -q -r "$req"; then
  if pinned_ok; then
    echo "SDK: installed into $venv: $(grep -v '^#' "$req" | tr '\n' ' ')"
    exit 0
  fi
  echo "ERROR: installed, but $venv does not import the pinned versions of $req" >&2
  exit 1
fi
# The install failed. Only an index that cannot be reached at all excuses that: ask it for one of the
# packages, any version, without dependencies; if that works, the failure was something else (a pin
# the index does not have, a broken build, a full disk).
probe="$(mktemp -d)"
trap 'rm -rf "$probe"' EXIT
name="$(grep -m1 -v '^#' "$req" | sed 's/[=<>!~].*//')"
if "${pip[@]}" download -q --no-deps -d "$probe" "$name" >/dev/null 2>&1; then
  echo "ERROR: the package index answers, but installing $req failed (see above)" >&2
  exit 1
fi
echo "SDK: the package index cannot be reached ($name could not even be downloaded)" >&2
exit 3
