#!/usr/bin/env bash
# host1, as the vagrant user (`vagrant provision host1 --provision-with rootless`): rootless strata on
# a host whose cgroup v2 is real. systemd delegates user@UID.service to the user (cpu, memory and
# pids enabled for its children): a container started from inside that subtree gets its group there
# (runner/cgroups.py, delegated_v2), where -m and --cpu-shares are enforced. Checked here:
#   1. the premises of tests/test_cgroups_rootless.py on the real tree: the subtree is the highest
#      group of the user's, cpu and memory are enabled in it, delegated_v2 finds it from inside it
#   2. run -m 64m --cpu-shares 512 from a scope under user@UID.service: the group is
#      <subtree>/strata/<id> with memory.max, memory.swap.max and cpu.weight set, the container's
#      process in it, nothing made outside the subtree; removed with the container
#   3. the memory limit holds: a container that needs more than 64m is killed by the OOM killer
#   4. the CPU weights hold: two busy containers (--cpu-shares 512 and 2048) on all CPUs get CPU time
#      in about the ratio of their weights
#   5. from the ssh login session itself (a scope of root's, outside the subtree): no limits, said once
#   6. a zygote started in one of the two places serves only callers there: a container's group
#      follows its caller (each way round)
set -euo pipefail
export PATH=/opt/strata/.venv/bin:$PATH
cd /opt/strata

uid=$(id -u)
cg=/sys/fs/cgroup
service="user.slice/user-$uid.slice/user@$uid.service"
fail() { echo "rootless: FAIL: $*" >&2; exit 1; }
ok() { echo "rootless: ok: $*"; }
step() { printf '$ %s\n' "$*"; "$@"; }
# CMD in a transient scope of the user's systemd (a group under user@UID.service), as a login shell
# started by systemd --user, a user's desktop session or `systemd-run --user` has it
in_service() { systemd-run --user --scope --quiet -- "$@"; }
weight() { python -c "from runner.cgroups import shares_to_weight; print(shares_to_weight($1))"; }
cleanup() {
    for name in limited hog busy-512 busy-2048 unlimited; do strata rm -f "$name" >/dev/null 2>&1 || true; done
}
# a command handed to the zygote runs in a fork of it, in the zygote's cgroup: so the zygote takes a
# command only from a client in its own cgroup, and tells one from elsewhere to run it itself
zygote_pid() { cat "${XDG_RUNTIME_DIR:?}/strata/zygote.pid" 2>/dev/null || true; }
stop_zygote() {
    local z
    z=$(zygote_pid)
    [ -n "$z" ] || return 0
    kill "$z" 2>/dev/null || true
    for _ in $(seq 50); do [ -d "/proc/$z" ] || break; sleep 0.1; done
    rm -f "$XDG_RUNTIME_DIR/strata/zygote.pid"  # (its own, gone with it)
}
# start_zygote [in_service]: a strata command starts the zygote in the background: until it says its pid
start_zygote() {
    "$@" strata version >/dev/null
    for _ in $(seq 150); do [ -n "$(zygote_pid)" ] && break; sleep 0.2; done
    [ -n "$(zygote_pid)" ] || fail "no zygote started"
}
stop_zygote
start_zygote  # this ssh session's first command starts it, in the session's scope (section 6)
echo "zygote $(zygote_pid) started in $(cut -d: -f3 "/proc/$(zygote_pid)/cgroup")"
trap cleanup EXIT
cleanup

echo "== 1. the delegation, as tests/test_cgroups_rootless.py models it"
echo "login session: $(cat /proc/self/cgroup)"
[ "$(stat -c %u "$cg/$service")" = "$uid" ] || fail "$service is not the user's"
[ "$(stat -c %u "$cg/user.slice/user-$uid.slice")" = 0 ] || fail "user-$uid.slice is the user's (expected root's)"
enabled=$(cat "$cg/$service/cgroup.subtree_control")
for c in cpu memory; do [[ " $enabled " == *" $c "* ]] || fail "$c is not enabled under $service ($enabled)"; done
ok "systemd delegates $service to $(id -un), with '$enabled' enabled for its children"
got=$(in_service python -c 'from runner import cgroups; print(cgroups.delegated_v2())')
echo "delegated_v2() inside a scope of user@$uid.service: $got"
[ "$got" = "$service" ] || fail "delegated_v2 found $got, not $service"
ok "delegated_v2 finds the subtree from inside it"

echo "== 2. run -m 64m --cpu-shares 512 from inside the subtree"
examples/busybox-rootfs.sh | strata import - busybox >/dev/null
step in_service strata run -d --name limited -m 64m --cpu-shares 512 busybox sleep 600
id=$(strata inspect -f '{{.Id}}' limited)
pid=$(strata inspect -f '{{.State.Pid}}' limited)
group="$cg/$service/strata/$id"
[ -d "$group" ] || fail "no group at $group; the container's process is in $(cat /proc/"$pid"/cgroup)"
echo "container $id, pid $pid, in $(cat /proc/"$pid"/cgroup)"
for f in memory.max memory.swap.max cpu.weight; do echo "$f: $(cat "$group/$f")"; done
[ "$(cat "$group/memory.max")" = $((64 << 20)) ] || fail "memory.max is not 64m"
[ "$(cat "$group/cpu.weight")" = "$(weight 512)" ] || fail "cpu.weight is not $(weight 512) (512 shares)"
grep -qx "$pid" "$group/cgroup.procs" || fail "the container's process is not in its group"
[ "$(cat /proc/"$pid"/cgroup)" = "0::/$service/strata/$id" ] || fail "the container's process is elsewhere"
[ ! -e "$cg/strata" ] || ls -ld "$cg/strata"  # root's containers' parent: never the user's doing
ok "the container's group is $service/strata/<id>, with its limits"
step strata inspect -f '{{.HostConfig.Memory}} {{.HostConfig.CpuShares}}' limited
step strata rm -f limited
[ ! -e "$group" ] || fail "$group is left after rm"
ok "rm removes the group"

echo "== 3. the memory limit holds"
set +e
in_service strata run --name hog -m 64m busybox sh -c 'x=$(head -c 200000000 /dev/zero | tr "\0" x); echo survived'
code=$?
set -e
echo "exit $code; OOMKilled: $(strata inspect -f '{{.State.OOMKilled}}' hog)"
[ "$code" = 137 ] || fail "a container that needs 200 MB under -m 64m exited $code, not 137"
[ "$(strata inspect -f '{{.State.OOMKilled}}' hog)" = true ] || fail "hog is not marked OOMKilled"
step in_service strata run --rm -m 64m busybox sh -c 'x=$(head -c 20000000 /dev/zero | tr "\0" x); echo 20 MB fit'
ok "over 64m: killed by the OOM killer (137, OOMKilled); under it: runs"

echo "== 4. the CPU weights hold"
cpus=$(nproc)
loops=$(for _ in $(seq "$cpus"); do printf 'while :; do :; done & '; done)
step in_service strata run -d --name busy-512 --cpu-shares 512 busybox sh -c "${loops}wait"
step in_service strata run -d --name busy-2048 --cpu-shares 2048 busybox sh -c "${loops}wait"
usage() { awk '/^usage_usec/ {print $2}' "$cg/$service/strata/$(strata inspect -f '{{.Id}}' "$1")/cpu.stat"; }
sleep 3
a0=$(usage busy-512); b0=$(usage busy-2048)
sleep 20
a1=$(usage busy-512); b1=$(usage busy-2048)
strata rm -f busy-512 busy-2048 >/dev/null
ratio=$(python -c "print(round(($b1 - $b0) / max($a1 - $a0, 1), 2))")
expected=$(python -c "print(round($(weight 2048) / $(weight 512), 2))")
echo "over 20 s on $cpus CPUs: --cpu-shares 2048 got $(( (b1 - b0) / 1000 )) ms, 512 got $(( (a1 - a0) / 1000 )) ms: ratio $ratio (weights $(weight 2048):$(weight 512) = $expected)"
python -c "import sys; sys.exit(0 if $ratio >= 0.6 * $expected else 1)" || fail "the CPU ratio $ratio is far from the weights' $expected"
ok "CPU time follows cpu.weight"

echo "== 5. from the ssh login session itself (outside the subtree)"
session=$(STRATA_NO_ZYGOTE=1 python -c 'from runner import cgroups; print(cgroups.delegated_v2())')
echo "delegated_v2() in $(cut -d: -f3 /proc/self/cgroup): $session"
out=$(STRATA_NO_ZYGOTE=1 strata run --name unlimited -m 64m busybox true 2>&1)
echo "$out"
echo "recorded: $(strata inspect -f '{{.HostConfig.Memory}} {{.HostConfig.CpuShares}}' unlimited)"
[ "$session" = None ] || fail "delegated_v2 found $session from the login session"
[ "$(printf '%s\n' "$out" | grep -c 'not enforced')" = 1 ] || fail "run did not say once that the limits are not enforced"
ok "no subtree of the user's there: no limits, said once"
echo "== 6. the caller's group, wherever the zygote is"
where() {  # the cgroup a container started by `$@ strata run -d` gets, with -m 64m
    "$@" strata run -d --name where -m 64m busybox sleep 60 >/dev/null 2>&1 || true
    local p
    p=$(strata inspect -f '{{.State.Pid}}' where 2>/dev/null || true)
    if [ -n "$p" ] && [ "$p" != 0 ]; then cut -d: -f3 "/proc/$p/cgroup"; else echo "(no container)"; fi
    strata rm -f where >/dev/null 2>&1 || true
}
session_group=$(cut -d: -f3 /proc/self/cgroup)
stop_zygote
start_zygote
echo "zygote started in the login session ($(cut -d: -f3 "/proc/$(zygote_pid)/cgroup"))"
got=$(where in_service)
echo "  run -m 64m from a scope of user@$uid.service: $got"
[[ "$got" == "/$service/strata/"* ]] || fail "a container run from inside the subtree went to $got"
stop_zygote
start_zygote in_service
echo "zygote started in a scope of user@$uid.service ($(cut -d: -f3 "/proc/$(zygote_pid)/cgroup"))"
got=$(where env)
echo "  run -m 64m from the login session ($session_group): $got"
[ "$got" = "$session_group" ] || fail "a container run from the login session went to $got"
stop_zygote
ok "a container's group follows its caller, not the zygote's"
echo "rootless: all checks passed"
