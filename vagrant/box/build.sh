#!/usr/bin/env bash
# The lab's Vagrant box, built here from Debian's packages alone (no box download): Debian 12
# (bookworm) for vagrant-libvirt, what a `vagrant up` needs and nothing more.
#
#   vagrant/box/build.sh OUT.box        (root; about 5 minutes, most of it debootstrap)
#
# debootstrap --variant=minbase + a kernel, systemd, ssh, sudo, python3, fuse3, dbus, rsync, uidmap;
# a `vagrant` user (passwordless sudo, Vagrant's insecure public key from the Debian vagrant package,
# which `vagrant up` replaces with a key of its own); systemd-networkd with DHCP on eth0 and
# ClientIdentifier=mac (two VMs from one image share no lease); an empty /etc/machine-id (each VM
# makes its own on first boot) and no ssh host keys (each VM makes its own); a raw disk with an MBR,
# one ext4 partition and extlinux, converted to qcow2; metadata.json + Vagrantfile + box.img in a tar.
#
# Pitfalls this recipe steps around: some kernels do not scan a loop device's partitions (`losetup
# -P` gives no p1), so the partition is attached by its offset; extlinux cannot boot an ext4 with
# the 64bit feature, which mkfs turns on by default.
set -euo pipefail

out=$(realpath -m "${1:?usage: build.sh OUT.box}")
[ "$(id -u)" = 0 ] || { echo "build.sh: run as root (debootstrap, mount, losetup)" >&2; exit 1; }
mirror=${LAB_MIRROR:-http://deb.debian.org/debian}
size_gb=12                       # the disk's virtual size; qcow2 stores only what is used
offset=$((2048 * 512))           # the partition starts at 1 MiB
packages=(
    linux-image-amd64 systemd-sysv systemd-resolved libpam-systemd dbus dbus-user-session udev kmod
    openssh-server sudo python3 fuse3 rsync uidmap ca-certificates openssl make procps iproute2
)
key=$(ls /usr/share/rubygems-integration/all/gems/vagrant-*/keys/vagrant.pub 2>/dev/null | sort -V | tail -1)
[ -n "$key" ] || { echo "build.sh: Vagrant's insecure key not found (apt-get install vagrant)" >&2; exit 1; }
mbr=/usr/lib/EXTLINUX/mbr.bin
[ -f "$mbr" ] || { echo "build.sh: $mbr not found (apt-get install extlinux)" >&2; exit 1; }

work="$out.work"
mnt="$work/root"
loop=""
cleanup() {
    if mountpoint -q "$mnt" 2>/dev/null; then umount "$mnt"; fi
    if [ -n "$loop" ]; then losetup -d "$loop"; fi
    rm -rf "$work"
}
trap cleanup EXIT
rm -rf "$work"
mkdir -p "$mnt"

step() { printf '%s box: %s\n' "$(date +%T)" "$*"; }

step "disk: ${size_gb}G raw, MBR, one bootable ext4 partition at 1 MiB"
truncate -s "${size_gb}G" "$work/disk.raw"
echo "start=2048, type=83, bootable" | sfdisk -q "$work/disk.raw"
dd if="$mbr" of="$work/disk.raw" bs=440 count=1 conv=notrunc status=none
loop=$(losetup --find --show --offset "$offset" "$work/disk.raw")
mkfs.ext4 -q -L root -O ^64bit,^metadata_csum "$loop"
mount "$loop" "$mnt"

step "debootstrap --variant=minbase bookworm from $mirror"
debootstrap --variant=minbase --include="$(IFS=,; echo "${packages[*]}")" bookworm "$mnt" "$mirror" \
    > "$work/debootstrap.log" 2>&1 || { tail -20 "$work/debootstrap.log" >&2; exit 1; }

step "configure: fstab, network, ssh, the vagrant user"
cat > "$mnt/etc/apt/sources.list" <<SOURCES
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb ${mirror%/debian}/debian-security bookworm-security main
SOURCES
echo "LABEL=root / ext4 errors=remount-ro 0 1" > "$mnt/etc/fstab"
echo bookworm > "$mnt/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\tbookworm\n::1\tlocalhost ip6-localhost ip6-loopback\n' > "$mnt/etc/hosts"
cat > "$mnt/etc/systemd/network/10-eth0.network" <<'NETWORK'
[Match]
Name=eth0

[Network]
DHCP=ipv4

[DHCPv4]
ClientIdentifier=mac
NETWORK
ln -sf ../run/systemd/resolve/stub-resolv.conf "$mnt/etc/resolv.conf"
# host keys: none in the image, each VM makes its own before sshd starts
rm -f "$mnt"/etc/ssh/ssh_host_*
cat > "$mnt/etc/systemd/system/ssh-host-keys.service" <<'UNIT'
[Unit]
Description=Make the ssh host keys this machine lacks
Before=ssh.service

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A

[Install]
WantedBy=multi-user.target
UNIT
chroot "$mnt" systemctl enable -q systemd-networkd systemd-resolved ssh ssh-host-keys
chroot "$mnt" useradd -m -s /bin/bash -U vagrant
echo "vagrant ALL=(ALL) NOPASSWD:ALL" > "$mnt/etc/sudoers.d/vagrant"
chmod 0440 "$mnt/etc/sudoers.d/vagrant"
install -d -m 0700 -o 1000 -g 1000 "$mnt/home/vagrant/.ssh"
install -m 0600 -o 1000 -g 1000 "$key" "$mnt/home/vagrant/.ssh/authorized_keys"
grep -q '^vagrant:' "$mnt/etc/subuid" || echo "vagrant:100000:65536" >> "$mnt/etc/subuid"
grep -q '^vagrant:' "$mnt/etc/subgid" || echo "vagrant:100000:65536" >> "$mnt/etc/subgid"
# a throwaway VM under emulation: dpkg without fsync (as Docker's Debian images), no translations in
# apt's lists, and no initramfs rebuilt by later installs (busybox's hook triggers one: minutes
# under TCG; the box's own initramfs boots it)
echo force-unsafe-io > "$mnt/etc/dpkg/dpkg.cfg.d/unsafe-io"
echo 'Acquire::Languages "none";' > "$mnt/etc/apt/apt.conf.d/99no-translations"
sed -i 's/^update_initramfs=.*/update_initramfs=no/' "$mnt/etc/initramfs-tools/update-initramfs.conf"
grep -qx update_initramfs=no "$mnt/etc/initramfs-tools/update-initramfs.conf"
# each VM its own machine id (and so its own DHCP lease and journal)
: > "$mnt/etc/machine-id"
rm -f "$mnt/var/lib/dbus/machine-id"
ln -s /etc/machine-id "$mnt/var/lib/dbus/machine-id"
chroot "$mnt" apt-get clean
rm -rf "$mnt"/var/lib/apt/lists/* "$mnt"/tmp/* "$mnt"/var/log/*.log

step "boot: extlinux"
kernel=$(cd "$mnt/boot" && ls vmlinuz-* | sort -V | tail -1)
initrd=initrd.img-${kernel#vmlinuz-}
[ -f "$mnt/boot/$initrd" ] || { echo "build.sh: no /boot/$initrd in the image" >&2; exit 1; }
mkdir -p "$mnt/boot/extlinux"
cat > "$mnt/boot/extlinux/extlinux.conf" <<BOOT
DEFAULT debian
PROMPT 0
TIMEOUT 0
LABEL debian
    LINUX /boot/$kernel
    INITRD /boot/$initrd
    APPEND root=LABEL=root ro console=ttyS0 net.ifnames=0
BOOT
extlinux --install "$mnt/boot/extlinux" 2>/dev/null
umount "$mnt"
losetup -d "$loop"
loop=""

step "box: qcow2 + metadata.json + Vagrantfile"
qemu-img convert -O qcow2 "$work/disk.raw" "$work/box.img"
rm "$work/disk.raw"
printf '{"provider": "libvirt", "format": "qcow2", "virtual_size": %s}\n' "$size_gb" > "$work/metadata.json"
cat > "$work/Vagrantfile" <<'VAGRANTFILE'
Vagrant.configure("2") do |config|
  config.vm.provider :libvirt do |v|
    v.disk_bus = "virtio"
  end
end
VAGRANTFILE
tar -cf "$out.tmp" -C "$work" metadata.json Vagrantfile box.img
mv "$out.tmp" "$out"
step "done: $out ($(du -h "$out" | cut -f1))"
