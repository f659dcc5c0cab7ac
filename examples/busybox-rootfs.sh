#!/usr/bin/env bash
# A tar of a small root filesystem on stdout, for `strata import -`: the host's busybox-static (which
# `make demo` installs) with a link for each of its applets, /etc/passwd and /etc/group with root and
# nobody, /tmp. Files are owned by root in the tar whoever runs this. The README's tour starts here.
set -euo pipefail

busybox=$(command -v busybox) || { echo "busybox-rootfs: busybox is not installed (make demo installs busybox-static)" >&2; exit 1; }
if ldd "$busybox" >/dev/null 2>&1; then  # a dynamic busybox would find no libc in the image
    echo "busybox-rootfs: $busybox is not static (install busybox-static)" >&2
    exit 1
fi
rootfs=$(mktemp -d "${TMPDIR:-/tmp}/busybox-rootfs.XXXXXX")
trap 'rm -rf "$rootfs"' EXIT
mkdir -p "$rootfs"/{bin,etc,tmp,root,proc,sys,dev}
cp "$busybox" "$rootfs/bin/busybox"
for applet in $("$busybox" --list); do
    [ "$applet" = busybox ] || ln -s busybox "$rootfs/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/sh\n' > "$rootfs/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' > "$rootfs/etc/group"
chmod 755 "$rootfs"  # mktemp made it 0700: it becomes the image's /
chmod 1777 "$rootfs/tmp"
tar -C "$rootfs" --numeric-owner --owner=0 --group=0 --sort=name -cf - .
