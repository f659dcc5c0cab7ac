"""runner.oci: the config.json strata writes, the checks every config passes, and the root made from
one, every path resolved inside it."""

from __future__ import annotations

import json
import os

import pytest

from runner import syscalls as sc
from runner.errors import RunnerError
from runner.oci import rootfs, spec


def _record(**host: object) -> dict:
    return {
        "Id": "c" * 64,
        "Command": ["/bin/sh", "-c", "true"],
        "Seccomp": "default",
        "Config": {"Env": ["PATH=/bin"], "WorkingDir": "", "User": "nobody", "Hostname": "box", "Tty": False},
        "HostConfig": {"NetworkMode": "none", "CpuShares": 0, "Memory": 0, **host},
    }


def test_a_containers_config_carries_dockers_defaults():
    config = spec.for_container(_record(Memory=64 << 20, CpuShares=512), "/merged", {"hostname": "/h"})
    spec.check(config)
    assert config["process"]["args"] == ["/bin/sh", "-c", "true"] and config["root"]["path"] == "/merged"
    # the user looked up in the container's passwd; its root's copy honours setuid bits (Docker's default)
    assert config["annotations"] == {spec.USER_ANNOTATION: "nobody", spec.ROOT_SUID: "true"}
    assert {m["destination"] for m in config["mounts"]} == {
        "/proc",
        "/dev",
        "/dev/pts",
        "/sys",
        "/dev/mqueue",
        "/dev/shm",
        "/etc/hostname",
    }
    assert {n["type"] for n in config["linux"]["namespaces"]} == {"pid", "ipc", "uts", "mount", "cgroup", "network"}
    assert config["linux"]["resources"]["memory"] == {"limit": 64 << 20, "swap": 128 << 20}
    assert config["linux"]["resources"]["cpu"] == {"shares": 512}
    assert config["linux"]["resources"]["devices"][0] == {
        "allow": False,
        "type": "a",
        "major": None,
        "minor": None,
        "access": "rwm",
    }
    assert "keyctl" not in json.dumps(config["linux"]["seccomp"])  # the default profile, resolved
    host = spec.for_container(_record(NetworkMode="host"), "/m", {})
    assert "network" not in {n["type"] for n in host["linux"]["namespaces"]}
    assert next(m for m in host["mounts"] if m["destination"] == "/sys")["type"] == "bind"
    numeric = spec.for_container({**_record(), "Config": {**_record()["Config"], "User": "12:34"}}, "/m", {})
    assert numeric["process"]["user"] == {"uid": 12, "gid": 34} and numeric["annotations"] == {spec.ROOT_SUID: "true"}


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda c: c.update(hooks={}), "hooks is not supported"),
        (lambda c: c["linux"].update(intelRdt={}), "linux.intelRdt is not supported"),
        (lambda c: c["process"].update(args=[]), "process.args must name a command"),
        (lambda c: c["linux"]["namespaces"].append({"type": "time2"}), "unknown namespace type"),
    ],
)
def test_check_refuses_what_strata_would_not_honour(change, message):
    config = spec.for_container(_record(), "/m", {})
    change(config)
    with pytest.raises(RunnerError, match=message):
        spec.check(config)


def test_mount_options_read_as_runc_reads_them():
    flags, clear, propagation, data = rootfs.parse_options(["nosuid", "ro", "rw", "rbind", "rprivate", "mode=755"])
    assert flags == sc.MS_NOSUID | sc.MS_BIND | sc.MS_REC and clear == sc.MS_RDONLY
    assert propagation == sc.MS_PRIVATE | sc.MS_REC and data == "mode=755"
    with pytest.raises(RunnerError, match="idmap"):
        rootfs.parse_options(["idmap"])


def test_paths_are_made_inside_the_root_whatever_its_symlinks_say(tmp_path):
    root, host = tmp_path / "root", tmp_path / "host"
    root.mkdir()
    host.mkdir()
    os.symlink(str(host), root / "etc")  # absolute: would be the host's directory from outside
    os.symlink("../../../../../../../.." + str(host), root / "var")  # and a climb
    root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY)
    try:
        for path, directory in (("/etc/hostname", False), ("/var/a/b", True)):
            os.close(rootfs.make_in_root(root_fd, path, directory)[0])
    finally:
        os.close(root_fd)
    assert os.listdir(host) == []  # nothing made on the host
    assert (root / str(host).lstrip("/") / "hostname").is_file()  # but inside the root, where / would be
    assert (root / str(host).lstrip("/") / "a" / "b").is_dir()


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts need root")
def test_a_root_is_made_and_pivoted_into_without_touching_the_host(tmp_path):
    """rootfs.setup in a child with its own mount namespace: the bind over /etc/hostname and the tmpfs
    land inside the root although /etc and /var are symlinks out of it; the host sees none of it."""
    root, host = tmp_path / "root", tmp_path / "host"
    for d in ("bin", "proc"):
        (root / d).mkdir(parents=True)
    host.mkdir()
    os.symlink(str(host), root / "etc")
    os.symlink("../../../../../../.." + str(host), root / "var")
    source = tmp_path / "hostname"
    source.write_text("box\n")
    config = {
        "root": {"path": str(root)},
        "linux": {"maskedPaths": ["/proc/timer_list"]},
        "mounts": [
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=755"]},
            {"destination": "/etc/hostname", "type": "bind", "source": str(source), "options": ["rbind", "ro"]},
            {"destination": "/var/scratch", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "size=1m"]},
            {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
        ],
    }
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(r)
            sc.unshare(sc.CLONE_NEWNS)
            rootfs.setup(config)
            with open(os.path.realpath("/etc/hostname")) as f:
                seen = f.read()
            with open("/proc/timer_list") as f:
                masked = f.read()
            os.write(
                w,
                json.dumps(
                    {
                        "hostname": seen,
                        "masked": masked,
                        "null": os.path.exists("/dev/null"),
                        "scratch": os.path.ismount(os.path.realpath("/var/scratch")),
                    }
                ).encode(),
            )
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r) as f:
        report = f.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert json.loads(report) == {"hostname": "box\n", "masked": "", "null": True, "scratch": True}
    assert os.listdir(host) == []
