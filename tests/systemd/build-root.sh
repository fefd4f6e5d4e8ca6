#!/usr/bin/env bash
# Builds (once, then cached) the minimal Debian root that tests/systemd_boot.rs boots systemd in.
#
# The test never boots the machine's own root: systemd as PID 1 runs systemd-tmpfiles, which would clean
# the host's /tmp. So it gets a root of its own, debootstrapped from the mirror apt already uses here
# (package registries are the only network this project's CI has), matching the host's Debian release.
#
#   tests/systemd/build-root.sh            # build if missing or built by an older recipe
#   ELB_DRAIN_SYSTEMD_ROOT=/some/dir ...   # cache location (default /var/cache/elb-drain/systemd-root)
#
# Layout: $ROOT/rootfs (the tree) and $ROOT/stamp (the recipe it was built by). The tree is only ever
# used read-only, as the lower layer of a per-run overlay, so one build serves every run.
set -euo pipefail

# Bump when the package list or the fix-ups below change: the cached root is then rebuilt.
# ca-certificates: the agent's HTTP client (rustls with the platform's roots) refuses to start without
# any root certificate, even for the plain-HTTP loopback endpoints of the test; a real server has them.
RECIPE="elb-drain systemd root v2: minbase + systemd systemd-sysv dbus socat ca-certificates"
PACKAGES="systemd,systemd-sysv,dbus,socat,ca-certificates"

cache=${ELB_DRAIN_SYSTEMD_ROOT:-/var/cache/elb-drain/systemd-root}
stamp="$cache/stamp"

if [ "$(id -u)" != 0 ]; then
  echo "build-root: needs root (debootstrap)" >&2
  exit 1
fi

mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9   # two runs at once (CI retry, a developer) build it once

if [ -d "$cache/rootfs" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$RECIPE" ]; then
  echo "build-root: cached root at $cache/rootfs ($RECIPE)"
  exit 0
fi

command -v debootstrap >/dev/null || { echo "build-root: debootstrap is not installed" >&2; exit 1; }

# The host's release and mirror, so the root is what `apt-get` here would install.
suite=${ELB_DRAIN_DEBIAN_SUITE:-}
if [ -z "$suite" ] && [ -r /etc/os-release ]; then
  suite=$(. /etc/os-release; [ "${ID:-}" = debian ] && echo "${VERSION_CODENAME:-}" || true)
fi
suite=${suite:-bookworm}
mirror=${ELB_DRAIN_DEBIAN_MIRROR:-}
if [ -z "$mirror" ]; then
  # deb822 (.sources) first, then one-line sources.list entries; the first Debian main archive wins.
  mirror=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null \
    | awk '/^URIs:/ { for (i = 2; i <= NF; i++) if ($i !~ /security/) { print $i; exit } }')
fi
if [ -z "$mirror" ]; then
  mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
    | awk '$1 == "deb" && $2 !~ /^\[/ && $2 !~ /security/ && $3 !~ /security/ { print $2; exit }')
fi
mirror=${mirror:-http://deb.debian.org/debian}

start=$(date +%s)
echo "build-root: debootstrap $suite from $mirror into $cache/rootfs (recipe: $RECIPE)"
rm -rf "$cache/rootfs.new" "$cache/rootfs"
rm -f "$stamp"
debootstrap --variant=minbase --include="$PACKAGES" "$suite" "$cache/rootfs.new" "$mirror" \
  > "$cache/debootstrap.log" 2>&1 || {
    tail -30 "$cache/debootstrap.log" >&2
    rm -rf "$cache/rootfs.new"
    echo "build-root: debootstrap failed (log: $cache/debootstrap.log)" >&2
    exit 1
  }

r="$cache/rootfs.new"
# A container boot needs no consoles, no network configuration and no timers: fewer units, faster boot,
# and nothing that waits for hardware.
for unit in getty.target console-getty.service systemd-networkd.service systemd-networkd-wait-online.service \
  systemd-resolved.service systemd-timesyncd.service apt-daily.timer apt-daily-upgrade.timer \
  dpkg-db-backup.timer e2scrub_all.timer fstrim.timer; do
  ln -sf /dev/null "$r/etc/systemd/system/$unit"
done
echo "elb-drain-test" > "$r/etc/hostname"
# Left empty so systemd-nspawn (or systemd itself) gives every boot a fresh machine id.
: > "$r/etc/machine-id"
rm -rf "$r/var/cache/apt/archives"/*.deb "$r/var/lib/apt/lists"/*

mv "$r" "$cache/rootfs"
echo "$RECIPE" > "$stamp"
echo "build-root: built in $(( $(date +%s) - start )) s ($(du -sh "$cache/rootfs" | cut -f1))"
