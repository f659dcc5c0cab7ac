"""``strata build`` for real (RUN steps are real containers): Docker's history and progress, the
cache (a rebuild with nothing changed starts no container), multi-stage builds, .dockerignore, ADD,
heredocs, ONBUILD, contexts on stdin, and bad Dockerfiles that leave the store as they found it."""

from __future__ import annotations

import http.server
import io
import json
import os
import re
import tarfile
import threading

import pytest
from helpers import strata

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="containers need root")


def write(ctx, files: dict[str, str]) -> str:
    for name, text in files.items():
        path = ctx / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return str(ctx)


def ids(root: str) -> set[str]:
    return set(strata(root, "images", "-a", "-q", "--no-trunc").out.split())


def steps(err: str) -> dict[str, str]:
    """BuildKit plain progress -> {step name: CACHED | DONE | ERROR}."""
    names = dict(re.findall(r"^#(\d+) (\[(?!internal\]).*)$", err, re.M))
    ends = {}
    for number, end in re.findall(r"^#(\d+) (CACHED|DONE|ERROR)", err, re.M):
        if number in names:
            ends[names[number]] = end
    return ends


def run(root: str, image: str, *cmd: str) -> str:
    return strata(root, "run", "--rm", image, *cmd).out


def test_history_and_config_read_as_docker_writes_them(rootdir, tmp_path):
    ctx = write(
        tmp_path / "ctx",
        {
            "f.txt": "f\n",
            "Dockerfile": (
                'FROM bb\nARG V=1\nENV A=1 B="two words"\nWORKDIR /app\nCOPY f.txt ./\nRUN echo $V > v\n'
                'CMD ["cat", "v"]\n'
            ),
        },
    )
    image = strata(rootdir, "build", "-q", "-t", "hist", ctx).out.strip()
    rows = [json.loads(line) for line in strata(rootdir, "history", "--format", "json", "hist").out.splitlines()]
    created_by = [r["CreatedBy"] for r in rows][:-1][::-1]
    assert created_by[0] == "/bin/sh -c #(nop)  ARG V=1"
    assert created_by[1] == "/bin/sh -c #(nop)  ENV A=1 B=two words"
    assert created_by[2] == "/bin/sh -c #(nop) WORKDIR /app"
    assert re.fullmatch(r"/bin/sh -c #\(nop\) COPY file:[0-9a-f]{64} in \./ ", created_by[3])
    assert created_by[4] == "|1 V=1 /bin/sh -c echo $V > v"
    assert created_by[5] == '/bin/sh -c #(nop)  CMD ["cat" "v"]'
    assert rows[0]["ID"] == image and all(r["ID"].startswith("sha256:") for r in rows[:-1])  # each step an image
    doc = json.loads(strata(rootdir, "inspect", "hist").out)[0]
    assert [h.get("empty_layer", False) for h in doc["History"]][1:] == [True, True, False, False, False, True]
    assert len(doc["RootFS"]["Layers"]) == 4  # bb, WORKDIR's /app, COPY, RUN
    assert doc["Config"]["Cmd"] == ["cat", "v"] and doc["Config"]["WorkingDir"] == "/app"
    assert doc["Config"]["Env"] == [
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "A=1",
        "B=two words",
    ]  # bb has no Env: Docker's default PATH joins it at FROM
    assert run(rootdir, "hist") == "1\n"


def test_plain_progress_reads_like_buildkits(rootdir, tmp_path):
    ctx = write(tmp_path / "ctx", {"Dockerfile": "FROM bb\nRUN echo hello from run\nWORKDIR /w\n"})
    err = strata(rootdir, "build", "--progress", "plain", "-t", "pp", ctx).err
    assert "#1 [internal] load build definition from Dockerfile\n#1 transferring dockerfile: 43B done\n" in err
    assert re.search(r"^#3 \[internal\] load metadata for docker.io/library/bb:latest\n#3 DONE 0.0s$", err, re.M)
    assert re.search(r"^#4 \[1/3\] FROM docker.io/library/bb:latest$", err, re.M)
    assert re.search(r"^#5 \[2/3\] RUN echo hello from run\n#5 \d+\.\d{3} hello from run\n#5 DONE \d+\.\ds$", err, re.M)
    assert re.search(r"^#\d+ naming to docker.io/library/pp:latest done$", err, re.M)
    again = strata(rootdir, "build", "--progress", "plain", "-t", "pp", ctx).err
    assert steps(again) == {
        "[2/3] RUN echo hello from run": "CACHED",
        "[3/3] WORKDIR /w": "CACHED",
        "[1/3] FROM docker.io/library/bb:latest": "DONE",
    }


def test_flags_docker_has_that_strata_build_cannot_honour_are_refused_in_one_line(rootdir, tmp_path):
    ctx = write(tmp_path / "ctx", {"Dockerfile": "FROM bb\n"})
    res = strata(rootdir, "build", "--pull", "always", ctx, check=False)
    assert (
        res.code == 1
        and res.err.startswith("Error: --pull always: strata build does not pull")
        and len(res.err.splitlines()) == 1
    )
    res = strata(rootdir, "build", "-t", "Bad:Name", ctx, check=False)
    assert res.code == 1 and res.err.startswith("Error: invalid tag 'Bad:Name'") and len(res.err.splitlines()) == 1
    res = strata(rootdir, "build", str(tmp_path / "nowhere"), check=False)
    assert res.code == 1 and "unable to prepare context: path" in res.err


def test_tty_progress_is_one_line_a_step_and_a_summary(rootdir, tmp_path):
    ctx = write(tmp_path / "ctx", {"Dockerfile": "FROM bb\nRUN echo quiet here\nRUN echo failing; exit 2\n"})
    res = strata(rootdir, "build", "--progress", "tty", ctx, check=False)
    lines = res.err.splitlines()
    assert re.fullmatch(
        r" => \[2/3\] RUN echo quiet here +\d+\.\ds",
        lines[lines.index(next(line for line in lines if "RUN echo quiet" in line))],
    )
    assert "quiet here" not in res.err.replace("RUN echo quiet here", "")  # a step's output: only if it fails
    assert any(re.fullmatch(r" => ERROR \[3/3\] RUN echo failing; exit 2 +\d+\.\ds", line) for line in lines)
    assert "failing" in lines[lines.index(" > [3/3] RUN echo failing; exit 2:") + 1]
    assert re.fullmatch(r"\[\+\] Building \d+\.\ds \(\d+/\d+\) FAILED", lines[-2]) and lines[-1].startswith("Error: ")
    again = strata(rootdir, "build", "--progress", "tty", write(tmp_path / "ok", {"Dockerfile": "FROM bb\nRUN true\n"}))
    assert again.err.splitlines()[-1].endswith("FINISHED")


def test_a_big_context_shows_its_transfer(tmp_path, monkeypatch):
    """A tar on stdin is unpacked once, its progress shown as it goes (here every read: no interval)."""
    from runner.build import progress
    from runner.build.context import open_context

    monkeypatch.setattr(progress, "STATUS_INTERVAL", 0.0)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in [("Dockerfile", b"FROM bb\n"), *((f"data/{i}", os.urandom(1 << 20)) for i in range(4))]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    out = io.StringIO()
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    context = open_context("-", None, io.BytesIO(buf.getvalue()), str(scratch), progress.Progress(out, "plain"))
    assert (
        context.dockerfile == "FROM bb\n" and os.path.getsize(os.path.join(context.tree.root, "data", "3")) == 1 << 20
    )
    sizes = re.findall(r"^#1 transferring context: ([\d.]+)MB \d+\.\ds$", out.getvalue(), re.M)
    assert len(sizes) > 3 and [float(s) for s in sizes] == sorted(float(s) for s in sizes)
    assert re.search(r"^#1 transferring context: 4\.\d+MB done$", out.getvalue(), re.M)


def test_a_rebuild_with_nothing_changed_reuses_every_step_and_starts_no_container(rootdir, tmp_path):
    ctx = write(
        tmp_path / "ctx",
        {
            "a": "a\n",
            "b": "b\n",
            "Dockerfile": ("FROM bb\nCOPY a /a\nRUN cat /a > /copy\nCOPY b /b\nRUN echo done > /done\n"),
        },
    )
    first = strata(rootdir, "build", "-q", ctx).out.strip()
    containers = os.path.join(rootdir, "containers")
    before = os.stat(containers).st_mtime_ns, sorted(os.listdir(containers))
    before_ids = ids(rootdir)
    res = strata(rootdir, "build", "--progress", "plain", ctx)
    assert set(steps(res.err).values()) == {"CACHED", "DONE"}
    assert [v for k, v in steps(res.err).items() if "FROM" not in k] == ["CACHED"] * 4
    assert (os.stat(containers).st_mtime_ns, sorted(os.listdir(containers))) == before  # no container was made
    assert ids(rootdir) == before_ids and f"writing image {first} done" in res.err
    assert not [line for line in open("/proc/self/mountinfo") if rootdir in line]


def test_changing_a_copied_file_rebuilds_from_that_step_on(rootdir, tmp_path):
    ctx = tmp_path / "ctx"
    write(
        ctx,
        {
            "a": "a\n",
            "b": "b\n",
            "Dockerfile": ("FROM bb\nCOPY a /a\nRUN cat /a > /copy\nCOPY b /b\nRUN cat /b > /copy-b\n"),
        },
    )
    strata(rootdir, "build", "-q", str(ctx))
    os.utime(ctx / "a", (1, 1))  # a touch alone: Docker's checksums have no times
    assert set(steps(strata(rootdir, "build", "--progress", "plain", str(ctx)).err).values()) == {"CACHED", "DONE"}
    (ctx / "b").write_text("B\n")
    got = steps(strata(rootdir, "build", "--progress", "plain", "-t", "changed", str(ctx)).err)
    assert got == {
        "[1/5] FROM docker.io/library/bb:latest": "DONE",
        "[2/5] COPY a /a": "CACHED",
        "[3/5] RUN cat /a > /copy": "CACHED",
        "[4/5] COPY b /b": "DONE",
        "[5/5] RUN cat /b > /copy-b": "DONE",
    }
    assert run(rootdir, "changed", "cat", "/copy-b") == "B\n"
    got = steps(strata(rootdir, "build", "--progress", "plain", "--no-cache", str(ctx)).err)
    assert "CACHED" not in got.values()


def test_run_steps_get_runs_default_network_unless_told(rootdir, tmp_path):
    ctx = write(tmp_path / "ctx", {"Dockerfile": "FROM bb\nRUN ls /sys/class/net > /nets\n"})
    strata(rootdir, "build", "-q", "-t", "bridged", ctx)
    assert "eth0" in run(rootdir, "bridged", "cat", "/nets").split()
    # (the network is no part of a step's cache key, in Docker's builder either: --no-cache runs it again)
    strata(rootdir, "build", "-q", "--no-cache", "--network", "none", "-t", "alone", ctx)
    assert run(rootdir, "alone", "cat", "/nets").split() == ["lo"]
    res = strata(rootdir, "build", "-q", "--network", "nonsense", ctx, check=False)
    assert res.code == 1 and res.err == "Error: network mode 'nonsense' is not supported: bridge or none or host\n"


def test_a_build_arg_misses_only_from_the_first_run_that_sees_it(rootdir, tmp_path):
    ctx = write(tmp_path / "ctx", {"Dockerfile": "FROM bb\nRUN echo one > /1\nARG V=a\nRUN echo $V > /v\n"})
    strata(rootdir, "build", "-q", ctx)
    got = steps(strata(rootdir, "build", "--progress", "plain", "--build-arg", "V=b", "-t", "vb", ctx).err)
    assert got["[2/3] RUN echo one > /1"] == "CACHED" and got["[3/3] RUN echo b > /v"] == "DONE"  # (named expanded)
    assert run(rootdir, "vb", "cat", "/v") == "b\n"
    history = strata(rootdir, "history", "--no-trunc", "vb").out
    assert "|1 V=b /bin/sh -c echo $V > /v" in history and "ARG V=a" in history


BAD = {
    "unknown instruction": ("FROM bb\nRUN echo ok\nFOO bar\n", {}, "Dockerfile:3: unknown instruction: FOO"),
    "no such base": ("FROM bb\nRUN true\nFROM nosuch:1\nRUN true\n", {}, "Dockerfile:3: FROM nosuch:1: no such image"),
    "COPY through ..": (
        "FROM bb\nRUN echo ok\nCOPY ../outside /x\n",
        {},
        "Dockerfile:3: COPY failed: forbidden path outside the build context: ../outside",
    ),
    "COPY through a symlink": (
        "FROM bb\nCOPY ok /ok\nCOPY escape /x\n",
        {"ok": "ok"},
        "Dockerfile:3: COPY failed: forbidden path outside the build context: escape",
    ),
    "a failing RUN": (
        "FROM bb\nCOPY ok /ok\nRUN echo fine\nRUN echo failing && exit 3\n",
        {"ok": "ok"},
        'Dockerfile:4: process "/bin/sh -c echo failing && exit 3" did not complete successfully: exit code: 3',
    ),
    "a command not found": (
        "FROM bb\nRUN nosuchcommand\n",
        {},
        'Dockerfile:2: process "/bin/sh -c nosuchcommand" did not complete successfully: exit code: 127',
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_dockerfile_gives_one_line_and_leaves_nothing_behind(rootdir, tmp_path, case):
    text, files, message = BAD[case]
    ctx = tmp_path / "ctx"
    write(ctx, {"Dockerfile": text, **files})
    os.symlink("/etc/passwd", ctx / "escape")
    (tmp_path / "outside").write_text("secret")
    before = ids(rootdir)
    res = strata(rootdir, "build", "-q", "-t", "never", str(ctx), check=False)
    assert res.code == 1 and res.out == ""
    assert len(res.err.splitlines()) == 1 and res.err.startswith(f"Error: {message}")
    assert ids(rootdir) == before  # not even the steps before the failing one
    assert strata(rootdir, "ps", "-aq").out == ""
    assert os.listdir(os.path.join(rootdir, "builds")) == []
    assert not [line for line in open("/proc/self/mountinfo") if rootdir in line]
    plain = strata(rootdir, "build", "--progress", "plain", str(ctx), check=False)
    assert plain.err.splitlines()[-1] == res.err.strip()  # the last line, after the progress


def test_a_failed_build_keeps_the_images_of_earlier_builds(rootdir, tmp_path):
    ctx = write(tmp_path / "ctx", {"Dockerfile": "FROM bb\nRUN echo one > /1\n"})
    first = strata(rootdir, "build", "-q", ctx).out.strip()  # untagged, childless: a <none> image
    write(tmp_path / "ctx", {"Dockerfile": "FROM bb\nRUN echo one > /1\nRUN echo two > /2\nRUN exit 1\n"})
    before = ids(rootdir)
    res = strata(rootdir, "build", "--progress", "plain", ctx, check=False)
    assert res.code == 1 and "#5 CACHED" in res.err  # it built on the first build's step...
    assert ids(rootdir) == before and first in before  # ...which stays: only this build's own steps go


def test_multi_stage_builds_only_the_stages_the_target_needs(rootdir, tmp_path):
    ctx = write(
        tmp_path / "ctx",
        {
            "Dockerfile": (
                "FROM bb AS build\nRUN mkdir /out && echo artifact > /out/a && chown 65534:65534 /out/a\n"
                "FROM bb AS broken\nRUN exit 1\n"
                "FROM build AS test\nRUN test -f /out/a && echo tested > /tested\n"
                "FROM bb\nCOPY --from=build /out/a /a\nCOPY --from=bb /etc/passwd /from-image\n"
            )
        },
    )
    strata(rootdir, "build", "-q", "-t", "final", ctx)
    assert (
        run(rootdir, "final", "sh", "-c", "cat /a; stat -c %u /a; head -1 /from-image")
        == "artifact\n65534\nroot:x:0:0:root:/root:/bin/sh\n"
    )
    strata(rootdir, "build", "-q", "--target", "test", "-t", "tested", ctx)
    assert run(rootdir, "tested", "cat", "/tested") == "tested\n"
    res = strata(rootdir, "build", "-q", "--target", "broken", ctx, check=False)
    assert res.code == 1 and 'Dockerfile:4: process "/bin/sh -c exit 1"' in res.err


def test_dockerignore_keeps_files_out_with_exceptions_and_double_stars(rootdir, tmp_path):
    ctx = write(
        tmp_path / "ctx",
        {
            "keep.txt": "k",
            "drop.log": "d",
            "deep/er/x.log": "x",
            "deep/er/y.txt": "y",
            "deep/er/important.log": "i",
            "secret/s": "s",
            ".dockerignore": "*.log\n**/*.log\n!deep/er/important.log\nsecret\n",
            "Dockerfile": "FROM bb\nCOPY . /ctx/\n",
        },
    )
    strata(rootdir, "build", "-q", "-t", "ign", ctx)
    files = run(rootdir, "ign", "find", "/ctx", "-type", "f").split()
    assert sorted(files) == [
        "/ctx/.dockerignore",
        "/ctx/Dockerfile",
        "/ctx/deep/er/important.log",
        "/ctx/deep/er/y.txt",
        "/ctx/keep.txt",
    ]
    write(tmp_path / "ctx", {"Dockerfile": "FROM bb\nCOPY drop.log /\n"})
    res = strata(rootdir, "build", "-q", ctx, check=False)
    assert (
        res.code == 1
        and "Dockerfile:2: COPY failed: file not found in build context or excluded by .dockerignore: drop.log"
        in res.err
    )
    # BuildKit's rule: DOCKERFILE.dockerignore, next to the Dockerfile, wins over the context's own
    write(tmp_path / "df", {"own.Dockerfile": "FROM bb\nCOPY . /ctx/\n", "own.Dockerfile.dockerignore": "keep.txt\n"})
    strata(rootdir, "build", "-q", "-f", str(tmp_path / "df" / "own.Dockerfile"), "-t", "own", ctx)
    files = run(rootdir, "own", "find", "/ctx", "-name", "*.txt").split()
    assert "/ctx/keep.txt" not in files and "/ctx/deep/er/y.txt" in files


def test_add_unpacks_local_tars_and_refuses_a_url_without_network(rootdir, tmp_path):
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:xz") as tar:
        info = tarfile.TarInfo("pkg/bin/tool")
        info.size, info.mode, info.uid = 5, 0o755, 42
        tar.addfile(info, io.BytesIO(b"tool\n"))
    (ctx / "pkg.tar.xz").write_bytes(buf.getvalue())
    (ctx / "notatar.gz").write_bytes(b"\x1f\x8b not really")
    write(ctx, {"Dockerfile": "FROM bb\nADD pkg.tar.xz /opt/\nADD notatar.gz /raw/\nCOPY pkg.tar.xz /copied/\n"})
    strata(rootdir, "build", "-q", "-t", "added", str(ctx))
    assert (
        run(rootdir, "added", "sh", "-c", "cat /opt/pkg/bin/tool; stat -c %u:%a /opt/pkg/bin/tool; ls /raw; ls /copied")
        == "tool\n42:755\nnotatar.gz\npkg.tar.xz\n"
    )
    write(ctx, {"Dockerfile": "FROM bb\nADD http://127.0.0.1:1/file /f\n"})
    res = strata(rootdir, "build", "-q", "--network", "none", str(ctx), check=False)
    assert res.code == 1 and res.err.startswith(
        "Error: Dockerfile:2: ADD http://127.0.0.1:1/file: the build has no network"
    )


def test_add_downloads_a_url_when_the_build_has_a_network(rootdir, tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    (served / "remote.txt").write_text("from the server\n")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **k):
            super().__init__(*a, directory=str(served), **k)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/remote.txt"
        ctx = write(tmp_path / "ctx", {"Dockerfile": f"FROM bb\nADD {url} /dl/\n"})
        strata(rootdir, "build", "-q", "-t", "dl", ctx)  # bridge, run's default: strata fetches it, as dockerd
    finally:
        server.shutdown()
        server.server_close()
    assert run(rootdir, "dl", "sh", "-c", "cat /dl/remote.txt; stat -c %a /dl/remote.txt") == "from the server\n600\n"


def test_heredocs_run_scripts_and_make_files(rootdir, tmp_path):
    ctx = write(
        tmp_path / "ctx",
        {
            "Dockerfile": (
                "FROM bb\nENV WHO=world\n"
                "RUN <<EOF\necho one > /h1\necho two >> /h1\nEOF\n"
                "RUN cat <<EOT > /h2\nhello $WHO\nEOT\n"
                "COPY <<EOF /h3\nexpanded ${WHO}\nEOF\n"
                "COPY <<'EOF' /h4\nkept ${WHO}\nEOF\n"
                'RUN <<EOF\n#!/bin/sh\necho "script $0" > /h5\nEOF\n'
            )
        },
    )
    strata(rootdir, "build", "-q", "-t", "here", ctx)
    assert (
        run(rootdir, "here", "sh", "-c", "cat /h1 /h2 /h3 /h4 /h5; ls -a / | grep heredoc | wc -l")
        == "one\ntwo\nhello world\nexpanded world\nkept ${WHO}\nscript /.strata-heredoc/EOF\n0\n"
    )


def test_onbuild_triggers_run_when_the_image_is_a_base(rootdir, tmp_path):
    ctx = write(
        tmp_path / "ctx", {"Dockerfile": "FROM bb\nONBUILD RUN echo triggered > /t\nONBUILD COPY x /x\n", "x": "x\n"}
    )
    strata(rootdir, "build", "-q", "-t", "parent", ctx)
    assert json.loads(strata(rootdir, "inspect", "parent").out)[0]["Config"]["OnBuild"] == [
        "RUN echo triggered > /t",
        "COPY x /x",
    ]
    write(tmp_path / "ctx", {"Dockerfile": "FROM parent\nRUN cat /t /x > /both\n"})
    strata(rootdir, "build", "-q", "-t", "child", ctx)
    assert run(rootdir, "child", "cat", "/both") == "triggered\nx\n"
    assert json.loads(strata(rootdir, "inspect", "child").out)[0]["Config"]["OnBuild"] is None


def test_scratch_shell_stopsignal_and_healthcheck(rootdir, tmp_path, full_busybox):
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    os.link(os.path.join(full_busybox, "bin", "busybox"), ctx / "busybox") if os.stat(full_busybox).st_dev == os.stat(
        ctx
    ).st_dev else (ctx / "busybox").write_bytes(open(os.path.join(full_busybox, "bin", "busybox"), "rb").read())
    os.chmod(ctx / "busybox", 0o755)
    write(
        ctx,
        {
            "Dockerfile": (
                'FROM scratch\nCOPY busybox /bin/busybox\nSHELL ["/bin/busybox", "sh", "-c"]\n'
                "RUN /bin/busybox mkdir -p /usr/bin && /bin/busybox --install -s /usr/bin\n"
                'STOPSIGNAL 9\nHEALTHCHECK --interval=1m30s --retries=3 CMD ["true"]\nCMD ["/usr/bin/echo", "scratch"]\n'
            )
        },
    )
    strata(rootdir, "build", "-q", "-t", "fromscratch", str(ctx))
    doc = json.loads(strata(rootdir, "inspect", "fromscratch").out)[0]
    assert doc["Config"]["Env"] == ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
    assert doc["Config"]["StopSignal"] == "9" and doc["Config"]["Shell"] == ["/bin/busybox", "sh", "-c"]
    assert doc["Config"]["Healthcheck"] == {"Test": ["CMD", "true"], "Interval": 90_000_000_000, "Retries": 3}
    assert len(doc["RootFS"]["Layers"]) == 2
    assert (
        'HEALTHCHECK &{["CMD" "true"] "1m30s" "0s" "0s" "0s" \'\\x03\'}'
        in strata(rootdir, "history", "--no-trunc", "fromscratch").out
    )
    assert run(rootdir, "fromscratch") == "scratch\n"


def test_contexts_and_dockerfiles_from_stdin(rootdir, tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in (("Dockerfile", b"FROM bb\nCOPY in.txt /in.txt\n"), ("in.txt", b"from the tar\n")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    strata(rootdir, "build", "-q", "-t", "fromtar", "-", input=buf.getvalue())
    assert run(rootdir, "fromtar", "cat", "/in.txt") == "from the tar\n"
    strata(rootdir, "build", "-q", "-t", "fromtext", "-", input=b"FROM bb\nRUN echo text > /t\n")
    assert run(rootdir, "fromtext", "cat", "/t") == "text\n"
    ctx = write(tmp_path / "ctx", {"c": "c\n"})
    strata(rootdir, "build", "-q", "-f", "-", "-t", "dashf", ctx, input=b"FROM bb\nCOPY c /c\n")
    assert run(rootdir, "dashf", "cat", "/c") == "c\n"


def test_rmi_of_a_built_image_takes_its_steps_and_keeps_the_base(rootdir, tmp_path):
    ctx = write(tmp_path / "ctx", {"Dockerfile": "FROM bb\nRUN echo x > /x\nLABEL built=yes\n"})
    before = ids(rootdir)
    image = strata(rootdir, "build", "-q", "-t", "gone", "--label", "by=test", ctx).out.strip()
    assert json.loads(strata(rootdir, "inspect", "gone").out)[0]["Config"]["Labels"] == {"built": "yes", "by": "test"}
    steps_made = ids(rootdir) - before
    assert len(steps_made) == 3 and image in steps_made  # RUN, LABEL, --label's LABEL
    assert strata(rootdir, "images", "-q", "--no-trunc").out.split().count(image) == 1  # the steps: only with -a
    strata(rootdir, "build", "-q", "-t", "kept", write(tmp_path / "ctx2", {"Dockerfile": "FROM bb\nRUN echo x > /x\n"}))
    out = strata(rootdir, "rmi", "gone").out.splitlines()
    assert out[:3] == ["Untagged: gone:latest", f"Deleted: {image}", out[2]] and len(out) == 3  # RUN's step: kept's
    assert ids(rootdir) - before == {json.loads(strata(rootdir, "inspect", "kept").out)[0]["Id"]}
    assert strata(rootdir, "run", "--rm", "kept", "cat", "/x").out == "x\n"
