#!/usr/bin/env bash
# The strata test lab, end to end (`make lab`, `make lab-down`; root). See vagrant/README.md.
#
#   vagrant/lab.sh up          install what is missing, build the box (once: again when its recipe
#                              changes), start libvirt, boot host1 and host2, run every check, print
#                              a summary (each check, pass or fail, its time); exit 1 if one failed
#   vagrant/lab.sh down        destroy the VMs, the lab's networks and disks; stop what `up` started
#   vagrant/lab.sh sync        copy the repository again into the running VMs' /opt/strata (the venv kept)
#   vagrant/lab.sh check NAME FUNCTION ARGS...   one check again on the running VMs, e.g.
#                              `vagrant/lab.sh check host1-rootless vagrant provision host1 --provision-with rootless`
#   vagrant/lab.sh vagrant ... vagrant with the lab's settings (e.g. `vagrant/lab.sh vagrant ssh host1`)
#
# Everything it keeps is under build/lab/: the box, Vagrant's home (the box added), the disks (a
# libvirt pool of the lab's own), logs/ (one per check), state/ (what `up` started, for `down`).
# STRATA_LAB_TCG=0 uses KVM (where it works; on this project's machine nested KVM does not).
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
lab="$repo/build/lab"
state="$lab/state"
logs="$lab/logs"
box="$lab/strata-bookworm.box"
pool=strata-lab
networks=(strata-lab strata-lab-nat)  # the Vagrantfile's private and management networks
export VAGRANT_HOME="$lab/vagrant.d" VAGRANT_CWD="$repo/vagrant" VAGRANT_DEFAULT_PROVIDER=libvirt
export VAGRANT_NO_COLOR=1 VAGRANT_CHECKPOINT_DISABLE=1 LIBVIRT_DEFAULT_URI=qemu:///system
export STRATA_LAB_BOX=strata/bookworm STRATA_LAB_POOL=$pool STRATA_LAB_TCG=${STRATA_LAB_TCG:-1}
PACKAGES="qemu-system-x86 qemu-utils libvirt-daemon-system libvirt-clients dnsmasq-base vagrant vagrant-libvirt
    debootstrap extlinux fdisk rsync openssh-client"

say() { printf '%s lab: %s\n' "$(date +%T)" "$*"; }
die() { say "$*" >&2; exit 1; }

# --- checks: each one's name, result and time, for the summary -------------------------------------
results=()
failed=0
# check NAME CMD...: runs CMD with its output in logs/NAME.log (Vagrant's progress lines left out)
check() {
    local name=$1 start end code
    shift
    say "$name ..."
    start=$(date +%s)
    set +e
    "$@" 2>&1 | sed -u -e 's/\x1b\[K/\n/g' | grep --line-buffered -v -e '^Progress: ' -e '^$' > "$logs/$name.log"
    code=${PIPESTATUS[0]}
    set -e
    end=$(date +%s)
    if [ "$code" = 0 ]; then
        results+=("$(printf '  pass  %6ss  %s' $((end - start)) "$name")")
    else
        failed=$((failed + 1))
        results+=("$(printf '  FAIL  %6ss  %s  (exit %s: build/lab/logs/%s.log)' $((end - start)) "$name" "$code" "$name")")
        tail -n 25 "$logs/$name.log" | sed 's/^/    | /'
    fi
    say "$name: $([ "$code" = 0 ] && echo pass || echo FAIL) in $((end - start)) s"
    return "$code"
}
summary() {
    echo
    echo "strata lab: $(( ${#results[@]} - failed )) of ${#results[@]} checks passed (TCG: $STRATA_LAB_TCG; logs in build/lab/logs/)"
    printf '%s\n' "${results[@]}"
}

# --- the pieces ------------------------------------------------------------------------------------
install_packages() {
    make -C "$repo" --no-print-directory apt-install PACKAGES="$(echo $PACKAGES)" APT_FLAGS=--no-install-recommends
    vagrant plugin list | grep -q vagrant-libvirt || die "vagrant-libvirt is not among Vagrant's plugins"
}

# the box: built again when build.sh changes, added to Vagrant again when the box file changes
box_ready() {
    local recipe
    recipe=$(sha256sum "$repo/vagrant/box/build.sh" | cut -c1-16)
    if [ ! -f "$box" ] || [ "$(cat "$box.recipe" 2>/dev/null)" != "$recipe" ]; then
        rm -f "$box" "$box.recipe"
        bash "$repo/vagrant/box/build.sh" "$box"
        echo "$recipe" > "$box.recipe"
    else
        echo "the box is up to date ($box, recipe $recipe)"
    fi
    local id
    id="$recipe $(stat -c %Y "$box")"
    if [ "$(cat "$lab/box-added" 2>/dev/null)" != "$id" ] || ! vagrant box list | grep -q "^$STRATA_LAB_BOX "; then
        vagrant box add --force --name "$STRATA_LAB_BOX" "$box"
        echo "$id" > "$lab/box-added"
    fi
}

libvirt_up() {
    mkdir -p "$state"
    if virsh version >/dev/null 2>&1; then
        echo "libvirt answers already: used as it is"
    elif [ "$(cat /proc/1/comm)" = systemd ]; then
        systemctl start libvirtd
        touch "$state/libvirtd.systemd"
    else  # no systemd as PID 1: the daemons directly, stopped by pid in `down`
        # libvirtd adds its firewall chains (LIBVIRT_*) and turns on IPv4 forwarding for its NAT
        # network: `down` takes back what was not there before
        iptables -t filter -S LIBVIRT_INP >/dev/null 2>&1 || touch "$state/firewall.ours"
        sysctl -n net.ipv4.ip_forward > "$state/ip_forward.before"
        virtlogd -d -p "$state/virtlogd.pid"
        libvirtd -d -p "$state/libvirtd.pid"
        for _ in $(seq 100); do virsh version >/dev/null 2>&1 && break; sleep 0.1; done
    fi
    virsh version
    if ! virsh pool-info "$pool" >/dev/null 2>&1; then  # transient: gone with libvirtd, or in `down`
        mkdir -p "$lab/pool"
        virsh pool-create-as "$pool" dir --target "$lab/pool"
    fi
    # vagrant-libvirt uploads the box's disk into the pool through libvirt's stream API, in minutes;
    # a copy under the volume name it looks for is seconds (with another name it uploads, as before)
    local image volume
    image="$VAGRANT_HOME/boxes/${STRATA_LAB_BOX//\//-VAGRANTSLASH-}/0/libvirt/box.img"
    volume="${STRATA_LAB_BOX//\//-VAGRANTSLASH-}_vagrant_box_image_0_$(stat -c %Y "$image")_box.img"
    if [ ! -f "$lab/pool/$volume" ]; then
        rm -f "$lab/pool/"*_vagrant_box_image_*
        cp --sparse=always "$image" "$lab/pool/$volume.part"
        mv "$lab/pool/$volume.part" "$lab/pool/$volume"
        virsh pool-refresh "$pool"
    fi
}

boot() {
    vagrant up --no-provision
    vagrant rsync  # (up copies the repository only into a VM it boots: again for one already up)
    vagrant ssh-config > "$state/ssh-config"
}

# on HOST CMD...: CMD in HOST through ssh (as vagrant; sudo for root)
on() {
    local host=$1
    shift
    ssh -F "$state/ssh-config" -o LogLevel=ERROR "$host" "$@"
}

facts() {
    local host=$1
    on "$host" 'set -e
        echo "$(hostname): $(. /etc/os-release; echo "$PRETTY_NAME"), kernel $(uname -r), $(nproc) CPUs, $(python3 --version)"
        echo "machine-id $(cat /etc/machine-id)"
        ip -br -4 addr show | grep -v "^lo"
        mount -t cgroup,cgroup2 | tee /dev/stderr | grep -q "^cgroup2 on /sys/fs/cgroup type cgroup2"
        [ "$(mount -t cgroup | wc -l)" = 0 ] || { echo "a cgroup v1 hierarchy is mounted"; exit 1; }
        echo "/sys/fs/cgroup controllers: $(cat /sys/fs/cgroup/cgroup.controllers)"
        [ "$(stat -c %a /dev/fuse)" = 666 ] || { echo "/dev/fuse is $(stat -c %a /dev/fuse), not 0666"; exit 1; }
        echo "/dev/fuse 0666"
        other=$([ "$(hostname)" = host1 ] && echo host2 || echo host1)
        timeout 5 bash -c "</dev/tcp/$other/22" && echo "$other:22 reachable on the lab network"
        systemctl is-system-running || true'
}

distinct_machines() {
    local a b
    a=$(on host1 'cat /etc/machine-id; ip -4 -br addr show eth0')
    b=$(on host2 'cat /etc/machine-id; ip -4 -br addr show eth0')
    printf 'host1: %s\nhost2: %s\n' "$a" "$b"
    [ "$(echo "$a" | head -1)" != "$(echo "$b" | head -1)" ] || { echo "the two VMs share a machine-id"; return 1; }
    [ "$(echo "$a" | tail -1 | awk '{print $3}')" != "$(echo "$b" | tail -1 | awk '{print $3}')" ] ||
        { echo "the two VMs share an address"; return 1; }
}

# CA certificates this host adds to its trust (/usr/local/share/ca-certificates, e.g. a TLS-inspecting
# proxy's): the VMs trust them too, and pip there reads the system's bundle, as here; else pip's
# downloads through such a proxy fail ("self-signed certificate in certificate chain")
host_ca() {
    local host=$1 dir=/usr/local/share/ca-certificates names
    names=$(cd "$dir" 2>/dev/null && ls -- *.crt 2>/dev/null || true)
    if [ -z "$names" ]; then
        echo "this host adds no CA certificate of its own: nothing to pass on"
        return 0
    fi
    echo "passing on to $host: $(echo $names)"
    tar -C "$dir" -cf - $names | on "$host" "sudo sh -c 'mkdir -p $dir/lab-host && tar -C $dir/lab-host -xf - &&
        update-ca-certificates && printf \"[global]\\ncert = /etc/ssl/certs/ca-certificates.crt\\n\" > /etc/pip.conf && cat /etc/pip.conf'"
}

install_on() { vagrant provision "$1" --provision-with hosts,install; }

# the repository copied again into /opt/strata of the VMs already up, keeping what `make deps` made
# there (the venv, whose editable install reads the new source, pyfuse3's build): a change checked
# again in seconds, where the install step copies afresh and builds again (minutes under TCG)
sync_repo() {
    vagrant rsync
    local host
    for host in host1 host2; do
        on "$host" "sudo rsync -a --delete --exclude=/.venv/ --exclude=/build/ --exclude='.stamp-*' \
            --exclude='*.egg-info/' --exclude=__pycache__/ --exclude=.pytest_cache/ --exclude=.mypy_cache/ \
            --exclude=.ruff_cache/ /home/vagrant/strata/ /opt/strata/ && sudo chown -R root:root /opt/strata"
        echo "$host: /opt/strata synced"
    done
}

# host1's root may ssh to host2's: a key made on host1, authorized on host2
root_key() {
    local key
    key=$(on host1 'sudo sh -c "[ -f /root/.ssh/id_ed25519 ] || ssh-keygen -q -t ed25519 -N \"\" -f /root/.ssh/id_ed25519; cat /root/.ssh/id_ed25519.pub"')
    on host2 "sudo sh -c 'mkdir -p -m 0700 /root/.ssh && grep -qxF \"$key\" /root/.ssh/authorized_keys 2>/dev/null || echo \"$key\" >> /root/.ssh/authorized_keys'"
    on host1 'sudo ssh -o StrictHostKeyChecking=accept-new -o BatchMode=yes host2 hostname'
}

two_hosts() {
    local script=/opt/strata/vagrant/checks/two-hosts.sh
    case $1 in
    tarball)
        on host1 "sudo bash $script commit"
        echo '$ scp /tmp/fridge.tar host2:/tmp/   (on host1)'
        on host1 'sudo scp -o BatchMode=yes /tmp/fridge.tar host2:/tmp/fridge.tar'
        on host2 "sudo bash $script load"
        ;;
    registry)
        on host1 "sudo bash $script registry"
        echo '$ scp host1:registry.crt host2:/usr/local/share/ca-certificates/   (on host1)'
        on host1 'sudo scp -o BatchMode=yes /etc/strata-lab/registry.crt host2:/usr/local/share/ca-certificates/strata-lab-registry.crt'
        local code=0
        on host2 "sudo bash $script pull" || code=$?
        on host1 "sudo bash $script registry-stop"
        return $code
        ;;
    esac
}

up() {
    [ "$(id -u)" = 0 ] || die "run as root (make lab)"
    mkdir -p "$lab" "$logs" "$state"
    rm -f "$logs"/*.log
    local t0
    t0=$(date +%s)
    if check packages install_packages && check box box_ready && check libvirt libvirt_up &&
        check boot boot; then
        check facts-host1 facts host1 || true
        check facts-host2 facts host2 || true
        check distinct-machines distinct_machines || true
        check host-ca-host1 host_ca host1 || true
        check host-ca-host2 host_ca host2 || true
        # the project's own install step on both hosts at once
        ( check install-host1 install_on host1 > "$state/install-host1.out" || true; echo "${results[-1]}" > "$state/install-host1.result" ) &
        ( check install-host2 install_on host2 > "$state/install-host2.out" || true; echo "${results[-1]}" > "$state/install-host2.result" ) &
        wait
        for h in host1 host2; do
            cat "$state/install-$h.out"
            results+=("$(cat "$state/install-$h.result")")
            grep -q '^  pass' "$state/install-$h.result" || failed=$((failed + 1))
        done
        if grep -q '^  pass' "$state/install-host1.result" && grep -q '^  pass' "$state/install-host2.result"; then
            check root-ssh-host1-to-host2 root_key || true
            check two-hosts-tarball two_hosts tarball || true
            check two-hosts-registry two_hosts registry || true
        fi
        if grep -q '^  pass' "$state/install-host1.result"; then
            check host1-rootless vagrant provision host1 --provision-with rootless || true
            check host1-make-test vagrant provision host1 --provision-with test || true
        fi
    fi
    summary
    echo "  total $(( $(date +%s) - t0 ))s; the VMs stay up: vagrant/lab.sh vagrant ssh host1; make lab-down removes them"
    [ "$failed" = 0 ]
}

# libvirtd's own chains, once it is stopped and if they are empty (its networks gone)
firewall_off() {
    local cmd spec table parent chain
    for cmd in iptables ip6tables; do
        command -v "$cmd" >/dev/null || continue
        for spec in filter:INPUT:LIBVIRT_INP filter:OUTPUT:LIBVIRT_OUT filter:FORWARD:LIBVIRT_FWX \
            filter:FORWARD:LIBVIRT_FWI filter:FORWARD:LIBVIRT_FWO nat:POSTROUTING:LIBVIRT_PRT \
            mangle:POSTROUTING:LIBVIRT_PRT; do
            IFS=: read -r table parent chain <<< "$spec"
            "$cmd" -t "$table" -S "$chain" >/dev/null 2>&1 || continue
            if [ "$("$cmd" -t "$table" -S "$chain" | wc -l)" != 1 ]; then
                say "$cmd $table $chain still holds rules: left as it is"
                continue
            fi
            while "$cmd" -t "$table" -D "$parent" -j "$chain" 2>/dev/null; do :; done
            "$cmd" -t "$table" -X "$chain"
        done
    done
    say "libvirt's firewall chains removed"
}

down() {
    [ "$(id -u)" = 0 ] || die "run as root (make lab-down)"
    if virsh version >/dev/null 2>&1; then
        if [ -d "$VAGRANT_CWD/.vagrant/machines" ]; then
            vagrant destroy -f || true
        fi
        for domain in strata-lab-host1 strata-lab-host2; do  # whatever vagrant left of them (the Vagrantfile's default_prefix)
            virsh domstate "$domain" >/dev/null 2>&1 || continue
            virsh destroy "$domain" >/dev/null 2>&1 || true
            virsh undefine "$domain" --remove-all-storage >/dev/null 2>&1 || virsh undefine "$domain" || true
        done
        for net in "${networks[@]}"; do
            virsh net-info "$net" >/dev/null 2>&1 || continue
            virsh net-destroy "$net" >/dev/null 2>&1 || true
            virsh net-undefine "$net" >/dev/null 2>&1 || true
            say "network $net removed"
        done
        if virsh pool-info "$pool" >/dev/null 2>&1; then
            virsh pool-destroy "$pool" >/dev/null 2>&1 || true
            virsh pool-undefine "$pool" >/dev/null 2>&1 || true
            say "pool $pool removed"
        fi
    fi
    rm -rf "$lab/pool" "$VAGRANT_CWD/.vagrant" "$state/ssh-config"
    # the daemons, if `up` started them (by the pids they wrote), else nothing
    local daemon pid
    for daemon in libvirtd virtlogd; do
        [ -f "$state/$daemon.pid" ] || continue
        pid=$(cat "$state/$daemon.pid")
        if [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$daemon" ]; then
            kill "$pid"
            for _ in $(seq 100); do [ -d "/proc/$pid" ] || break; sleep 0.1; done
            say "$daemon (pid $pid) stopped"
        fi
        rm -f "$state/$daemon.pid"
    done
    [ ! -f "$state/firewall.ours" ] || { firewall_off; rm -f "$state/firewall.ours"; }
    if [ -f "$state/ip_forward.before" ]; then
        [ "$(sysctl -n net.ipv4.ip_forward)" = "$(cat "$state/ip_forward.before")" ] ||
            sysctl -q -w net.ipv4.ip_forward="$(cat "$state/ip_forward.before")"
        rm -f "$state/ip_forward.before"
    fi
    if [ -f "$state/libvirtd.systemd" ]; then
        systemctl stop libvirtd
        rm -f "$state/libvirtd.systemd"
        say "libvirtd (systemd) stopped"
    fi
    say "down: no lab VM, network, pool or daemon of the lab is left (the box stays in build/lab/)"
}

case "${1:-up}" in
up) up ;;
check)  # vagrant/lab.sh check NAME FUNCTION ARGS...: one check again, on the running VMs
    shift; mkdir -p "$logs"; vagrant ssh-config > "$state/ssh-config"; check "$@" || true; summary; [ "$failed" = 0 ] ;;
sync)  # vagrant/lab.sh sync: the repository copied again into the running VMs (then `check` again)
    mkdir -p "$state"; vagrant ssh-config > "$state/ssh-config"; sync_repo ;;
down) down ;;
vagrant) shift; exec vagrant "$@" ;;
*) die "usage: lab.sh up|down|sync|check NAME FUNCTION ARGS|vagrant ARGS" ;;
esac
