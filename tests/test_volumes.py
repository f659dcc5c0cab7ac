"""Volumes, bind mounts and tmpfs mounts (issue 19, Storage): ``run -v``, ``--mount``, ``--tmpfs``,
``--read-only``, ``--volumes-from``, the ``volume`` verbs, ``rm -v``, an image's ``VOLUME``, and what
``diff``, ``commit``, ``export`` and ``inspect`` make of them, against real containers and mounts."""

from __future__ import annotations

import io
import json
import os
import secrets
import stat
import subprocess
import tarfile

from helpers import REPO, STRATA, snapshot, strata

IMAGE = "bb:latest"
ANON = "com.docker.volume.anonymous"


def run(root: str, *args: str, check: bool = True):
    return strata(root, "run", *args, check=check)


def volume_names(root: str) -> list[str]:
    return strata(root, "volume", "ls", "-q").out.split()


def data_dir(root: str, name: str) -> str:
    return os.path.join(root, "volumes", name, "_data")


def mounts(root: str, ref: str) -> list[dict]:
    return json.loads(strata(root, "inspect", "-f", "{{json .Mounts}}", ref).out)


# -- -v/--volume -----------------------------------------------------------------------------------
def test_bind_mount_is_the_host_dir_and_ro_refuses_writes(rootdir, tmp_path):
    host = tmp_path / "host"
    host.mkdir()
    (host / "in").write_text("from the host\n")
    res = run(rootdir, "--rm", "-v", f"{host}:/data", IMAGE, "sh", "-c", "cat /data/in; echo back > /data/out")
    assert res.out == "from the host\n"
    assert (host / "out").read_text() == "back\n" and (host / "out").stat().st_uid == 0
    res = run(rootdir, "--rm", "-v", f"{host}:/data:ro", IMAGE, "sh", "-c", "cat /data/in; touch /data/x", check=False)
    assert res.code == 1 and res.out == "from the host\n" and "Read-only file system" in res.err
    assert sorted(os.listdir(host)) == ["in", "out"]


def test_a_missing_host_path_is_made_as_dockers_v_does(rootdir, tmp_path):
    host = tmp_path / "new" / "deeper"
    run(rootdir, "--rm", "-v", f"{host}:/data", IMAGE, "sh", "-c", "echo made > /data/f")
    assert stat.S_IMODE(host.stat().st_mode) == 0o755 and (host / "f").read_text() == "made\n"


def test_a_host_file_is_bound_over_an_image_file_or_onto_a_new_one(rootdir, tmp_path):
    conf = tmp_path / "app.conf"
    conf.write_text("setting=1\n")
    res = run(
        rootdir,
        "--name",
        "files",
        "-v",
        f"{conf}:/etc/group:ro",
        "-v",
        f"{conf}:/opt/app/app.conf",
        IMAGE,
        "sh",
        "-c",
        "cat /etc/group; echo more >> /opt/app/app.conf; stat -c %F /opt/app/app.conf",
    )
    assert res.out == "setting=1\nregular file\n"
    assert conf.read_text() == "setting=1\nmore\n"
    assert strata(rootdir, "diff", "files").out == ""
    cid = json.loads(strata(rootdir, "inspect", "files").out)[0]["Id"]
    made = os.path.join(rootdir, "containers", cid, "mountpoints", "opt", "app", "app.conf")
    assert stat.S_ISREG(os.lstat(made).st_mode) and os.path.getsize(made) == 0


def test_a_relative_host_path_is_refused_in_dockers_words_and_leaves_nothing(rootdir):
    run(rootdir, "--rm", IMAGE, "true")  # the store's own files that any run makes (its locks)
    before = snapshot(rootdir)
    res = run(rootdir, "--rm", "-v", "data/dir:/data", IMAGE, "true", check=False)
    assert res.code == 125 and res.out == ""
    assert res.err == (
        'Error: create data/dir: "data/dir" includes invalid characters for a local volume name, '
        'only "[a-zA-Z0-9][a-zA-Z0-9_.-]" are allowed. If you intended to pass a host directory, '
        "use absolute path\n"
    )
    assert snapshot(rootdir) == before and not os.path.exists(os.path.join(REPO, "data"))


def test_a_dot_path_is_taken_from_the_working_directory_as_dockers_cli_does(rootdir, tmp_path):
    res = subprocess.run(
        [*STRATA, "--root", rootdir, "run", "--rm", "-v", "./here:/data", IMAGE, "sh", "-c", "echo dot > /data/f"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": REPO},
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "here" / "f").read_text() == "dot\n"


def test_a_named_volume_is_made_on_first_use_and_outlives_its_container(rootdir):
    run(rootdir, "--name", "writer", "-v", "appdata:/srv/data", IMAGE, "sh", "-c", "echo kept > /srv/data/f")
    assert volume_names(rootdir) == ["appdata"]
    assert open(os.path.join(data_dir(rootdir, "appdata"), "f")).read() == "kept\n"  # Docker's layout
    assert mounts(rootdir, "writer") == [
        {
            "Type": "volume",
            "Name": "appdata",
            "Source": data_dir(rootdir, "appdata"),
            "Destination": "/srv/data",
            "Driver": "local",
            "Mode": "z",
            "RW": True,
            "Propagation": "",
        }
    ]
    strata(rootdir, "rm", "-v", "writer")  # -v: anonymous volumes only
    assert run(rootdir, "--rm", "-v", "appdata:/x:ro", IMAGE, "cat", "/x/f").out == "kept\n"
    assert volume_names(rootdir) == ["appdata"]


def test_an_anonymous_volume_goes_with_rm_v_and_run_rm_but_a_named_one_stays(rootdir):
    run(rootdir, "--name", "anon", "-v", "/scratch", "-v", "named:/named", IMAGE, "sh", "-c", "echo a > /scratch/f")
    point = {m["Destination"]: m for m in mounts(rootdir, "anon")}["/scratch"]
    assert point["Destination"] == "/scratch" and len(point["Name"]) == 64 and point["Mode"] == ""
    assert sorted(volume_names(rootdir)) == sorted([point["Name"], "named"])
    assert json.loads(strata(rootdir, "volume", "inspect", point["Name"]).out)[0]["Labels"] == {ANON: ""}
    strata(rootdir, "rm", "anon")  # without -v: every volume stays, as Docker's
    assert sorted(volume_names(rootdir)) == sorted([point["Name"], "named"])
    strata(rootdir, "volume", "rm", point["Name"])
    run(rootdir, "--name", "again", "-v", "/scratch", IMAGE, "true")
    (again,) = [m["Name"] for m in mounts(rootdir, "again")]
    strata(rootdir, "rm", "-v", "again")
    assert volume_names(rootdir) == ["named"] and not os.path.exists(os.path.join(rootdir, "volumes", again))
    run(rootdir, "--rm", "-v", "/scratch", "-v", "named:/named", IMAGE, "true")
    assert volume_names(rootdir) == ["named"]


def test_bad_storage_flags_give_one_line_and_leave_nothing_behind(rootdir, tmp_path):
    run(rootdir, "--rm", IMAGE, "true")  # the store's own files that any run makes (its locks)
    before = snapshot(rootdir)
    cases = [
        (["-v", "/a:/b:/c:/d"], "strata: invalid spec: /a:/b:/c:/d: too many colons"),
        (["-v", "/a::/b"], "strata: invalid spec: /a::/b: empty section between colons"),
        (["-v", "/data:ro"], "Error: invalid volume specification: '/data:ro'"),
        (["-v", f"{tmp_path}:/x:bogus"], "Error: invalid mode: bogus"),
        (["-v", f"{tmp_path}:/x:ro,rw"], "Error: invalid mode: ro,rw"),
        (
            ["-v", f"{tmp_path}:x"],
            f"Error: invalid volume specification: '{tmp_path}:x': invalid mount config for "
            "type \"bind\": invalid mount path: 'x' mount path must be absolute",
        ),
        (
            ["-v", f"{tmp_path}:/"],
            f"Error: invalid volume specification: '{tmp_path}:/': invalid mount config for "
            "type \"bind\": invalid specification: destination can't be '/'",
        ),
        (
            ["-v", "relative"],
            "Error: invalid volume specification: 'relative': invalid mount config for type "
            "\"volume\": invalid mount path: 'relative' mount path must be absolute",
        ),
        (
            ["-v", "a:/x"],
            "Error: create a: volume name is too short, names should be at least two alphanumeric characters",
        ),
        (["-v", f"{tmp_path}:/x", "-v", "vol:/x"], "Error: Duplicate mount point: /x"),
        (["--tmpfs", "/x", "-v", "vol:/x"], "Error: Duplicate mount point: /x"),
        (["--tmpfs", "/x:bogus=1"], 'Error: Invalid tmpfs option ["bogus" "1"]'),
        (
            ["--tmpfs", "rel"],
            "Error: invalid mount config for type \"tmpfs\": invalid mount path: 'rel' mount path must be absolute",
        ),
        (
            ["--mount", f"type=bind,src={tmp_path}/nope,dst=/x"],
            f'Error: invalid mount config for type "bind": bind source path does not exist: {tmp_path}/nope',
        ),
        (
            ["--mount", "type=bind,dst=/x"],
            'Error: invalid mount config for type "bind": field Source must not be empty',
        ),
        (
            ["--mount", "type=tmpfs,src=x,dst=/x"],
            'Error: invalid mount config for type "tmpfs": field Source must not be specified',
        ),
        (["--mount", "type=npipe,dst=/x"], 'Error: invalid mount config for type "npipe": mount type unknown'),
        (
            ["--mount", "type=volume,src=v,dst=/x,volume-driver=nfs"],
            'Error: error looking up volume plugin nfs: plugin "nfs" not found',
        ),
        (
            ["--mount", f"type=bind,src={tmp_path}"],
            f'strata: invalid argument "type=bind,src={tmp_path}" for "--mount" flag: target is required',
        ),
        (
            ["--mount", "type=bind,bogus=1,dst=/x"],
            'strata: invalid argument "type=bind,bogus=1,dst=/x" for "--mount" flag: unexpected key \'bogus\' in '
            "'bogus=1'",
        ),
        (
            ["--mount", "type=bind,dst=/x,volume-nocopy"],
            'strata: invalid argument "type=bind,dst=/x,volume-nocopy" for "--mount" flag: cannot mix \'volume-*\' '
            "options with mount type 'bind'",
        ),
        (
            ["--mount", "type=tmpfs,dst=/x,readonly=maybe"],
            'strata: invalid argument "type=tmpfs,dst=/x,readonly=maybe" for "--mount" flag: invalid value for '
            "readonly: maybe",
        ),
        (["--volumes-from", "nosuch"], "Error: No such container: nosuch"),
        (
            ["--volumes-from", "x:shared"],
            'Error: invalid argument: "shared". Propagation can\'t be specified while '
            "importing volumes from data container",
        ),
    ]
    for flags, message in cases:
        res = run(rootdir, "--rm", *flags, IMAGE, "true", check=False)
        assert res.code == 125, (flags, res.err)
        assert res.err.splitlines()[0] == message, flags
        assert len(res.err.splitlines()) == (2 if message.startswith("strata:") else 1), res.err
        assert res.out == ""
    assert snapshot(rootdir) == before
    assert os.listdir(tmp_path) == ["store"]  # (the store's own directory): no bind source was made


# -- --mount, --tmpfs, --read-only -----------------------------------------------------------------
def _mount_line(out: str, where: str) -> list[str]:
    (line,) = [line.split() for line in out.splitlines() if line.split()[1:2] == [where]]
    return line[3].split(",")


def test_mount_flag_binds_volumes_and_tmpfs(rootdir, tmp_path):
    host = tmp_path / "src"
    host.mkdir()
    (host / "f").write_text("bound\n")
    res = run(
        rootdir,
        "--name",
        "mm",
        "--mount",
        f"type=bind,source={host},target=/b,readonly",
        "--mount",
        "type=volume,src=mvol,dst=/v,volume-label=team=a",
        "--mount",
        "type=tmpfs,destination=/t,tmpfs-size=1m,tmpfs-mode=1770",
        "--mount",
        "type=volume,dst=/anon",
        IMAGE,
        "sh",
        "-c",
        "cat /b/f; touch /b/x 2>&1; echo v > /v/f; stat -c %a /t; cat /proc/mounts",
    )
    out = res.out.splitlines()
    assert out[0] == "bound" and "Read-only file system" in out[1] and out[2] == "1770"
    assert "ro" in _mount_line(res.out, "/b")
    assert {"size=1024k", "mode=1770", "noexec", "nosuid", "nodev"} <= set(_mount_line(res.out, "/t"))
    assert json.loads(strata(rootdir, "volume", "inspect", "mvol").out)[0]["Labels"] == {"team": "a"}
    points = {m["Destination"]: m for m in mounts(rootdir, "mm")}
    assert points["/b"] == {
        "Type": "bind",
        "Source": str(host),
        "Destination": "/b",
        "Mode": "",
        "RW": False,
        "Propagation": "rprivate",
    }
    assert points["/t"] == {
        "Type": "tmpfs",
        "Source": "",
        "Destination": "/t",
        "Mode": "",
        "RW": True,
        "Propagation": "",
    }
    assert points["/v"]["Name"] == "mvol" and points["/v"]["RW"] is True
    assert len(points["/anon"]["Name"]) == 64
    host_config = json.loads(strata(rootdir, "inspect", "-f", "{{json .HostConfig}}", "mm").out)
    assert host_config["Mounts"][0] == {"Type": "bind", "Source": str(host), "Target": "/b", "ReadOnly": True}
    assert host_config["Binds"] is None and host_config["ReadonlyRootfs"] is False


def test_tmpfs_flag_takes_options_over_dockers_defaults(rootdir):
    res = run(
        rootdir,
        "--rm",
        "--tmpfs",
        "/run",
        "--tmpfs",
        "/fast:size=2m,exec,mode=700",
        IMAGE,
        "sh",
        "-c",
        "echo x > /run/f && cat /run/f; stat -c %a /fast; cat /proc/mounts",
    )
    assert res.out.splitlines()[:2] == ["x", "700"]
    assert {"noexec", "nosuid", "nodev"} <= set(_mount_line(res.out, "/run"))
    fast = set(_mount_line(res.out, "/fast"))
    assert "noexec" not in fast and {"size=2048k", "nosuid", "nodev"} <= fast


def test_read_only_root_keeps_volumes_and_tmpfs_writable(rootdir):
    res = run(
        rootdir,
        "--name",
        "ro",
        "--read-only",
        "--tmpfs",
        "/run",
        "-v",
        "rovol:/data",
        IMAGE,
        "sh",
        "-c",
        "touch /root/x 2>&1; (echo h > /etc/hostname) 2>&1; touch /run/ok && echo tmpfs ok; "
        "touch /data/ok && echo volume ok; touch /dev/shm/ok && echo shm ok",
        check=False,
    )
    out = res.out.splitlines()
    assert "Read-only file system" in out[0] and "Read-only file system" in out[1]
    assert out[2:] == ["tmpfs ok", "volume ok", "shm ok"]
    assert json.loads(strata(rootdir, "inspect", "-f", "{{json .HostConfig.ReadonlyRootfs}}", "ro").out) is True
    assert strata(rootdir, "diff", "ro").out == ""


def test_volumes_from_shares_another_containers_volumes_and_binds(rootdir, tmp_path):
    host = tmp_path / "shared"
    run(
        rootdir,
        "--name",
        "data",
        "-v",
        f"{host}:/b",
        "-v",
        "dvol:/d",
        "-v",
        "/anon",
        IMAGE,
        "sh",
        "-c",
        "echo b > /b/f; echo d > /d/f; echo a > /anon/f",
    )
    res = run(
        rootdir,
        "--name",
        "reader",
        "--volumes-from",
        "data:ro",
        IMAGE,
        "sh",
        "-c",
        "cat /b/f /d/f /anon/f; touch /d/x 2>&1",
        check=False,
    )
    assert res.out.splitlines()[:3] == ["b", "d", "a"] and "Read-only file system" in res.out
    assert all(m["RW"] is False for m in mounts(rootdir, "reader"))
    assert run(rootdir, "--rm", "--volumes-from", "data", IMAGE, "sh", "-c", "touch /d/rw && echo rw").out == "rw\n"
    anon = next(m["Name"] for m in mounts(rootdir, "data") if m["Destination"] == "/anon")
    strata(rootdir, "rm", "-v", "data")  # its anonymous volume is still the reader's
    assert anon in volume_names(rootdir)
    strata(rootdir, "rm", "-v", "reader")
    assert anon not in volume_names(rootdir)


# -- the image's VOLUME ----------------------------------------------------------------------------
def test_an_images_volume_gets_an_anonymous_volume_seeded_from_the_image(rootdir):
    run(
        rootdir,
        "--name",
        "mk",
        IMAGE,
        "sh",
        "-c",
        "mkdir -p /var/lib/app && echo seed > /var/lib/app/seed && "
        "chmod 750 /var/lib/app && chown 65534 /var/lib/app/seed",
    )
    strata(rootdir, "commit", "-c", 'VOLUME ["/var/lib/app", "/empty"]', "mk", "withvol")
    res = run(rootdir, "--name", "user", "withvol", "sh", "-c", "cat /var/lib/app/seed; echo mine > /var/lib/app/new")
    assert res.out == "seed\n"
    points = {m["Destination"]: m for m in mounts(rootdir, "user")}
    assert sorted(points) == ["/empty", "/var/lib/app"] and all(m["Type"] == "volume" for m in points.values())
    data = points["/var/lib/app"]["Source"]
    assert sorted(os.listdir(data)) == ["new", "seed"]
    assert stat.S_IMODE(os.stat(data).st_mode) == 0o750 and os.stat(os.path.join(data, "seed")).st_uid == 65534
    assert json.loads(strata(rootdir, "inspect", "-f", "{{json .Config.Volumes}}", "user").out) == {
        "/empty": {},
        "/var/lib/app": {},
    }
    assert strata(rootdir, "diff", "user").out == ""  # what it wrote is in the volume, not its layer
    # nocopy: a named volume mounted there stays empty
    assert run(rootdir, "--rm", "-v", "bare:/var/lib/app:nocopy", "withvol", "ls", "/var/lib/app").out == ""
    strata(rootdir, "rm", "-v", "user", "mk")
    assert volume_names(rootdir) == ["bare"]


# -- commit, diff, export, inspect -----------------------------------------------------------------
def test_commit_diff_and_export_leave_mounts_and_their_mountpoints_out(rootdir, tmp_path):
    host, other = tmp_path / "host", tmp_path / "other"
    other.mkdir()
    run(
        rootdir,
        "--name",
        "cc",
        "-v",
        f"{host}:/mnt/deep/bind",
        "-v",
        "cvol:/srv/vol",
        "--tmpfs",
        "/scratch",
        "--mount",
        f"type=bind,src={other},dst=/root/hostfile-dir",
        IMAGE,
        "sh",
        "-c",
        "echo b > /mnt/deep/bind/f; echo v > /srv/vol/f; echo t > /scratch/f; echo own > /root/own",
    )
    assert strata(rootdir, "diff", "cc").out.splitlines() == ["C /root", "A /root/own"]
    names = tarfile.open(fileobj=io.BytesIO(strata_bytes(rootdir, "export", "cc"))).getnames()
    assert "root/own" in names and "etc/hostname" in names
    assert not [n for n in names if n.split("/")[0] in ("mnt", "srv", "scratch") or "hostfile-dir" in n]
    strata(rootdir, "commit", "cc", "committed")
    res = run(
        rootdir,
        "--rm",
        "committed",
        "sh",
        "-c",
        "cat /root/own; ls -d /mnt /srv /scratch /root/hostfile-dir 2>&1 | grep -c 'No such file'",
    )
    assert res.out.splitlines() == ["own", "4"]


def strata_bytes(root: str, *args: str) -> bytes:
    proc = subprocess.run(
        [*STRATA, "--root", root, *args],
        capture_output=True,
        cwd=REPO,
        timeout=120,
        env={**os.environ, "PYTHONPATH": REPO},
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_inspect_shows_binds_and_volumes_as_docker_does(rootdir, tmp_path):
    run(rootdir, "--name", "ii", "-v", f"{tmp_path}:/b:ro", "-v", "ivol:/v", "--tmpfs", "/t:size=1m", IMAGE, "true")
    doc = json.loads(strata(rootdir, "inspect", "ii").out)[0]
    assert doc["Mounts"] == [
        {
            "Type": "bind",
            "Source": str(tmp_path),
            "Destination": "/b",
            "Mode": "ro",
            "RW": False,
            "Propagation": "rprivate",
        },
        {
            "Type": "volume",
            "Name": "ivol",
            "Source": data_dir(rootdir, "ivol"),
            "Destination": "/v",
            "Driver": "local",
            "Mode": "z",
            "RW": True,
            "Propagation": "",
        },
    ]
    assert doc["HostConfig"]["Binds"] == [f"{tmp_path}:/b:ro", "ivol:/v"]
    assert doc["HostConfig"]["Tmpfs"] == {"/t": "size=1m"} and "Mounts" not in doc["HostConfig"]
    assert doc["HostConfig"]["VolumesFrom"] is None and doc["Config"]["Volumes"] is None


# -- symlinks in the image ------------------------------------------------------------------------
def test_a_destination_through_a_symlink_to_etc_stays_inside_the_root(rootdir, tmp_path):
    """An image whose /esc is a symlink to /etc (and /rel one to ../../../../etc): the mounts land on
    the container's /etc, the directories made for them too; the host's /etc gets nothing, and a new
    volume is seeded from the image's /etc, not the host's."""
    tag = f"strata-escape-{secrets.token_hex(4)}"
    run(rootdir, "--name", "mk", IMAGE, "sh", "-c", "ln -s /etc /esc && ln -s ../../../../../../etc /rel")
    strata(rootdir, "commit", "mk", "links")
    host = tmp_path / "bind"
    try:
        res = run(
            rootdir,
            "--name",
            "esc",
            "-v",
            f"esc-vol:/esc/{tag}",
            "-v",
            f"{host}:/rel/{tag}-bind",
            "links",
            "sh",
            "-c",
            f"echo in > /esc/{tag}/f && echo bound > /rel/{tag}-bind/f && grep -c ' /etc/{tag}' /proc/mounts",
        )
        assert res.out == "2\n"
        assert not os.path.lexists(f"/etc/{tag}") and not os.path.lexists(f"/etc/{tag}-bind")
        with open("/proc/self/mountinfo") as f:
            assert tag not in f.read()
        assert os.listdir(data_dir(rootdir, "esc-vol")) == ["f"] and (host / "f").read_text() == "bound\n"
        assert run(rootdir, "--rm", "-v", "etc-vol:/rel", "links", "cat", "/etc/passwd").out.startswith("root:")
        seeded = sorted(os.listdir(data_dir(rootdir, "etc-vol")))
        assert "passwd" in seeded and "os-release" not in seeded and "debian_version" not in seeded
        cid = json.loads(strata(rootdir, "inspect", "esc").out)[0]["Id"]
        made = os.path.join(rootdir, "containers", cid, "mountpoints")
        assert sorted(os.listdir(os.path.join(made, "etc"))) == sorted([tag, f"{tag}-bind"])
        assert strata(rootdir, "diff", "esc").out == ""
    finally:
        for leaked in (f"/etc/{tag}", f"/etc/{tag}-bind"):
            if os.path.isdir(leaked):
                os.rmdir(leaked)


# -- the volume verbs ------------------------------------------------------------------------------
def test_volume_create_ls_inspect_rm(rootdir):
    assert strata(rootdir, "volume", "create", "--label", "a=b", "one").out == "one\n"
    assert strata(rootdir, "volume", "create", "one").out == "one\n"  # an existing name: given back
    generated = strata(rootdir, "volume", "create").out.strip()
    assert len(generated) == 64 and all(c in "0123456789abcdef" for c in generated)
    assert strata(rootdir, "volume", "ls").out.splitlines() == [
        "DRIVER    VOLUME NAME",
        *sorted([f"local     {generated}", "local     one"]),
    ]
    (doc,) = json.loads(strata(rootdir, "volume", "inspect", "one").out)
    assert set(doc) == {"CreatedAt", "Driver", "Labels", "Mountpoint", "Name", "Options", "Scope"}
    assert (doc["Driver"], doc["Labels"], doc["Mountpoint"], doc["Name"], doc["Scope"]) == (
        "local",
        {"a": "b"},
        data_dir(rootdir, "one"),
        "one",
        "local",
    )
    assert strata(rootdir, "volume", "inspect", "-f", "{{.Mountpoint}}", "one").out == data_dir(rootdir, "one") + "\n"
    assert json.loads(strata(rootdir, "inspect", "one").out) == [doc]  # docker inspect looks at volumes too
    res = strata(rootdir, "inspect", "--type", "volume", "nosuch", check=False)
    assert res.code == 1 and res.err == "Error: No such volume: nosuch\n"
    assert strata(rootdir, "volume", "ls", "-q", "-f", "label=a=b").out == "one\n"
    assert strata(rootdir, "volume", "ls", "--format", "{{.Name}} {{.Driver}}", "-f", "name=on").out == "one local\n"
    res = strata(rootdir, "volume", "inspect", "one", "nosuch", check=False)
    assert res.code == 1 and json.loads(res.out)[0]["Name"] == "one"
    assert res.err == "Error: get nosuch: no such volume\n"
    res = strata(rootdir, "volume", "create", "bad/name", check=False)
    assert res.code == 1 and res.err.startswith('Error: create bad/name: "bad/name" includes invalid characters')
    res = strata(rootdir, "volume", "create", "-d", "nfs", "x1", check=False)
    assert res.code == 1 and res.err == 'Error: error looking up volume plugin nfs: plugin "nfs" not found\n'
    res = strata(rootdir, "volume", "rm", "one", "nosuch", generated, check=False)
    assert res.code == 1 and res.out.split() == ["one", generated]
    assert res.err == "Error: get nosuch: no such volume\n"
    assert strata(rootdir, "volume", "rm", "-f", "nosuch").out == "nosuch\n"
    assert volume_names(rootdir) == [] and os.listdir(os.path.join(rootdir, "volumes")) == ["lock"]


def test_a_volume_in_use_cannot_be_removed(rootdir):
    cid = run(rootdir, "-d", "-v", "busy:/data", IMAGE, "sleep", "1000").out.strip()
    res = strata(rootdir, "volume", "rm", "busy", check=False)
    assert res.code == 1 and res.err == f"Error: remove busy: volume is in use - [{cid}]\n"
    strata(rootdir, "rm", "-f", cid)
    run(rootdir, "--name", "stopped", "-v", "busy:/data", IMAGE, "true")  # a stopped container uses it too
    stopped = json.loads(strata(rootdir, "inspect", "stopped").out)[0]["Id"]
    res = strata(rootdir, "volume", "rm", "-f", "busy", check=False)
    assert res.err == f"Error: remove busy: volume is in use - [{stopped}]\n"
    assert strata(rootdir, "volume", "ls", "-q", "-f", "dangling=false").out == "busy\n"
    strata(rootdir, "rm", "stopped")
    assert strata(rootdir, "volume", "ls", "-q", "-f", "dangling=true").out == "busy\n"
    assert strata(rootdir, "volume", "rm", "busy").out == "busy\n"


def test_volume_prune_removes_unused_anonymous_volumes_and_with_all_named_ones(rootdir):
    run(rootdir, "--name", "keeps", "-v", "/held", IMAGE, "true")
    run(rootdir, "--name", "gone", "-v", "/loose", IMAGE, "sh", "-c", "head -c 3000 /dev/zero > /loose/f")
    strata(rootdir, "volume", "create", "named")
    loose = next(m["Name"] for m in mounts(rootdir, "gone"))
    strata(rootdir, "rm", "gone")
    res = strata(rootdir, "volume", "prune", input=b"n\n")
    assert res.out == (
        "WARNING! This will remove anonymous local volumes not used by at least one container.\n"
        "Are you sure you want to continue? [y/N] Total reclaimed space: 0B\n"
    )
    assert loose in volume_names(rootdir)
    res = strata(rootdir, "volume", "prune", input=b"y\n")
    assert res.out.endswith(f"Deleted Volumes:\n{loose}\n\nTotal reclaimed space: 3kB\n")
    assert len(volume_names(rootdir)) == 2 and "named" in volume_names(rootdir)
    assert strata(rootdir, "volume", "prune", "-f").out == "Total reclaimed space: 0B\n"
    res = strata(rootdir, "volume", "prune", "-a", "-f")
    assert res.out == "Deleted Volumes:\nnamed\n\nTotal reclaimed space: 0B\n"
    assert len(volume_names(rootdir)) == 1  # the stopped container's
