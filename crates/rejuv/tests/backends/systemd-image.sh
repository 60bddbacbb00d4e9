#!/bin/sh
# Builds (once per machine) a Debian bookworm image whose PID 1 is systemd, for the systemd
# backend's tests: a root filesystem made with debootstrap, then `docker import`. The tag is
# a hash of this script, so a changed package list makes a new image and an unchanged one is
# never rebuilt. Prints the tag on its last line of output.
#
#   crates/rejuv/tests/backends/systemd-image.sh           # build if missing, print the tag
#
# Needs root (debootstrap), the Docker Engine and Debian's package mirror (apt's sources).
set -eu
PACKAGES="systemd,systemd-sysv,dbus,procps,ca-certificates"
SUITE=bookworm
MIRROR="${REJUV_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
here="$(cd "$(dirname "$0")" && pwd)"
hash="$(sha256sum "$here/systemd-image.sh" | cut -c1-16)"
tag="rejuv-systemd-test:$hash"
if docker image inspect "$tag" >/dev/null 2>&1; then
    echo "$tag"
    exit 0
fi
if ! command -v debootstrap >/dev/null 2>&1; then
    echo "installing debootstrap" >&2
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >&2
fi
root="$(mktemp -d /tmp/rejuv-systemd-rootfs.XXXXXX)"
trap 'rm -rf "$root"' EXIT
echo "debootstrap $SUITE into $root (packages: $PACKAGES)" >&2
debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$root" "$MIRROR" >&2
# A container has no consoles, no udev and no hardware: units that wait for them are masked,
# so boot reaches multi-user.target quickly.
for unit in getty.target systemd-udevd.service systemd-udev-trigger.service \
    systemd-logind.service console-getty.service systemd-timesyncd.service \
    apt-daily.timer apt-daily-upgrade.timer e2scrub_reap.service; do
    ln -sf /dev/null "$root/etc/systemd/system/$unit"
done
echo "rejuv-systemd-test" > "$root/etc/hostname"
rm -rf "$root/var/cache/apt/archives"/*.deb "$root/var/lib/apt/lists"/*
tar -C "$root" -c . | docker import \
    -c 'CMD ["/sbin/init"]' -c 'ENV container=docker' \
    -c "LABEL rejuv.test-image=systemd" - "$tag" >&2
echo "$tag"
