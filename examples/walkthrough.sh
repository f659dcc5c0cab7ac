#!/usr/bin/env bash
# The walkthrough `make demo` runs: build a base image from the host's busybox-static, move it
# through save/load as another host would, and show the store's views. Each command is printed
# before its output; the script stops at the first step that does not give what it should.
set -euo pipefail

work=$(mktemp -d "${TMPDIR:-/tmp}/strata-demo.XXXXXX")
trap 'rm -rf "$work"' EXIT
host_a="$work/host-a"   # two store roots stand for two hosts
host_b="$work/host-b"

step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@"; }
fail() { echo "walkthrough: $*" >&2; exit 1; }

busybox=$(command -v busybox) || fail "busybox-static is not installed"
rootfs="$work/rootfs"
mkdir -p "$rootfs"/{bin,etc,tmp,root,proc,sys,dev}
cp "$busybox" "$rootfs/bin/busybox"
for applet in $("$busybox" --list); do
    [ "$applet" = busybox ] || ln -sf busybox "$rootfs/bin/$applet"
done
echo "root:x:0:0:root:/root:/bin/sh" > "$rootfs/etc/passwd"
echo "root:x:0:" > "$rootfs/etc/group"
chmod 1777 "$rootfs/tmp"

echo "== Host A: a base image from busybox-static"
step strata --root "$host_a" import "$rootfs" busybox:latest --change 'CMD ["/bin/sh"]'
step strata --root "$host_a" images
step strata --root "$host_a" tag busybox:latest busybox:stable
step strata --root "$host_a" images --tree
step strata --root "$host_a" history busybox
step strata --root "$host_a" save -o "$work/busybox.tar" busybox
step tar -tf "$work/busybox.tar"

echo
echo "== Host B: load what host A saved"
step strata --root "$host_b" load -i "$work/busybox.tar"
step strata --root "$host_b" images
id_a=$(strata --root "$host_a" images -q | head -1)
id_b=$(strata --root "$host_b" images -q | head -1)
[ "$id_a" = "$id_b" ] || fail "image id changed in transit: $id_a vs $id_b"
echo "same image id on both hosts: $id_b"
step strata --root "$host_b" images --tree
step strata --root "$host_b" history busybox:stable
step strata --root "$host_b" info
step strata --root "$host_b" system check
echo
echo "walkthrough: all steps passed"
