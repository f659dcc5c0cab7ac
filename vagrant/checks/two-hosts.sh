#!/usr/bin/env bash
# One host's part of the seed's "copying images to other hosts", between the lab's two VMs (as root,
# with strata as `make deps` installed it in /opt/strata). vagrant/lab.sh runs the parts in order:
#
#   host1: commit        a base image, a container that changes it, `commit` -> fridge, `save`
#   (lab.sh)             scp /tmp/fridge.tar from host1 to host2, over the lab's private network
#   host2: load          `load` the tarball and `run` fridge: the cool file is there
#   host1: registry      Debian's docker-registry on host1:5443 (TLS: a certificate made here for host1,
#                        which both hosts trust), `push` fridge to it
#   host2: pull          `pull` host1:5443/fridge:1 and `run` it
#   host1: registry-stop the registry goes
#
# Each step prints the commands it runs and stops at the first result that is not what it should be.
set -euo pipefail
export PATH=/opt/strata/.venv/bin:$PATH
cd /opt/strata

step() { printf '$ %s\n' "$*"; "$@"; }
show() { printf '$ %s\n' "$*"; out=$("$@"); printf '%s\n' "$out"; }
fail() { echo "two-hosts: $*" >&2; exit 1; }
registry_dir=/var/lib/strata-lab-registry
cert=/usr/local/share/ca-certificates/strata-lab-registry.crt
unit=strata-lab-registry

case "${1:?usage: two-hosts.sh commit|load|registry|pull|registry-stop}" in
commit)
    for name in cooler; do strata rm -f "$name" >/dev/null 2>&1 || true; done
    strata rmi fridge >/dev/null 2>&1 || true
    printf '$ examples/busybox-rootfs.sh | strata import - busybox\n'
    examples/busybox-rootfs.sh | strata import - busybox --change 'CMD ["/bin/sh"]'
    step strata run --name cooler busybox sh -c "echo 'cool content' > /tmp/cool-file"
    show strata diff cooler
    [ "$out" = "$(printf 'C /tmp\nA /tmp/cool-file')" ] || fail "diff shows more than the new file"
    step strata commit cooler fridge
    step strata images --tree
    step strata save -o /tmp/fridge.tar fridge
    step ls -l /tmp/fridge.tar
    ;;
load)
    strata rmi -f fridge >/dev/null 2>&1 || true
    step strata load -i /tmp/fridge.tar
    show strata run --rm fridge cat /tmp/cool-file
    [ "$out" = "cool content" ] || fail "fridge on $(hostname) does not have the cool file"
    step strata history fridge
    ;;
registry)
    # a certificate for host1 (its name and its address on the lab network), trusted by both hosts
    mkdir -p /etc/strata-lab
    address=$(getent hosts host1 | awk '{print $1; exit}')
    step openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=host1 \
        -addext "subjectAltName=DNS:host1,IP:$address" \
        -keyout /etc/strata-lab/registry.key -out /etc/strata-lab/registry.crt 2>/dev/null
    install -m 0644 /etc/strata-lab/registry.crt "$cert"
    update-ca-certificates >/dev/null
    mkdir -p "$registry_dir"
    printf 'version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: :5443\n  tls:\n    certificate: /etc/strata-lab/registry.crt\n    key: /etc/strata-lab/registry.key\n' \
        "$registry_dir" > /etc/strata-lab/registry.yml
    systemctl stop "$unit" 2>/dev/null || true
    systemctl reset-failed "$unit" 2>/dev/null || true
    step systemd-run --quiet --unit "$unit" docker-registry serve /etc/strata-lab/registry.yml
    for _ in $(seq 100); do  # until it answers, 20 s at most
        python3 -c "import urllib.request; urllib.request.urlopen('https://host1:5443/v2/', timeout=1)" 2>/dev/null && break
        sleep 0.2
    done
    step python3 -c "import urllib.request; print(urllib.request.urlopen('https://host1:5443/v2/', timeout=5).status)"
    step strata tag fridge host1:5443/fridge:1
    step strata push host1:5443/fridge:1
    ;;
pull)
    [ -f "$cert" ] || fail "host1's registry certificate is not at $cert"
    update-ca-certificates >/dev/null
    strata rmi -f host1:5443/fridge:1 >/dev/null 2>&1 || true
    step strata pull host1:5443/fridge:1
    show strata run --rm host1:5443/fridge:1 cat /tmp/cool-file
    [ "$out" = "cool content" ] || fail "fridge pulled on $(hostname) does not have the cool file"
    step strata images
    ;;
registry-stop)
    systemctl stop "$unit" 2>/dev/null || true
    rm -rf "$registry_dir"
    ;;
*)
    fail "no step $1"
    ;;
esac
