#!/bin/sh
# Builds the arm64 root filesystem of `cargo xtask vmtest --arch arm64` and
# packs it as a tarball (xtask caches it under target/vm/arm64/).
#
#   rootfs-arm64.sh WORK_DIR TARBALL MIRROR
#
# Debian bookworm minbase with what the guest script and the root suites
# call (ip, tc, nft, ethtool, sysctl, setpriv, mountpoint, timeout, dd) and
# virtme-ng's busybox. debootstrap's second stage runs arm64 binaries under
# qemu-user (binfmt, registered by xtask): the slow part, minutes.
set -eu
WORK=$1
TARBALL=$2
MIRROR=$3
PACKAGES=iproute2,iputils-ping,nftables,kmod,procps,ethtool,util-linux,mount,busybox-static,ca-certificates

rm -rf "$WORK"
mkdir -p "$WORK"
ROOT=$WORK/root
debootstrap --arch=arm64 --variant=minbase --foreign --include="$PACKAGES" bookworm "$ROOT" "$MIRROR"
chroot "$ROOT" /debootstrap/debootstrap --second-stage
# dpkg put busybox in /usr/bin (merged /usr). virtme-init powers off with
# `poweroff -f`; minbase has no systemd, so busybox provides it (without
# it the guest ends in a kernel panic instead of a power-off).
test -x "$ROOT/usr/bin/busybox"
ln -sf /usr/bin/busybox "$ROOT/usr/sbin/poweroff"
# Downloaded packages are not needed in the guest.
rm -rf "$ROOT"/var/cache/apt/archives/*.deb "$ROOT"/var/lib/apt/lists/*
tar -C "$ROOT" --numeric-owner -cf - . | zstd -q -T0 -3 -o "$TARBALL.partial"
mv "$TARBALL.partial" "$TARBALL"
rm -rf "$WORK"
