"""``strata build`` against ``buildah bud`` (Debian's buildah, with a private store of its own): the
same Dockerfile, using every instruction both know, and the same context give the same image tree
(types, modes, owners, sizes, contents, symlink targets), the same deletions (whiteouts) and the same
config, field by field. (Where they differ, strata does as Docker: ``EXPOSE 8000-8001`` gives two
ports, as moby's parsePortSpecs, where buildah keeps the range; tests/test_build_parser.py.)"""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile

import pytest
from build_support import Buildah, flatten, layers_of, strata_layout, whiteouts
from helpers import strata

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="containers need root"),
    pytest.mark.skipif(shutil.which("buildah") is None, reason="buildah is not installed (make test installs it)"),
]

DOCKERFILE = r"""# syntax=docker/dockerfile:1
# every instruction buildah 1.28 knows too (heredocs it does not: tests/test_build.py)
ARG BASE=base
FROM ${BASE} AS builder
ARG GREETING=hello
RUN echo "$GREETING" > /greeting && mkdir -p /out/sub && echo built > /out/artifact \
    && chown 65534:65534 /out/artifact && ln -s /greeting /out/link && chmod 0700 /out/sub

FROM builder AS unused
RUN exit 1

FROM $BASE
ARG BASE
ARG V=1
MAINTAINER someone <someone@example.com>
LABEL org.example.a="x y" b=c
ENV A=1 \
    B="two words"
WORKDIR /app
COPY --from=builder /out/ /app/from-builder/
COPY --chmod=0751 a.txt /app/exec
COPY --chown=65534:65534 modes /modes
COPY *.txt /app/txt/
COPY link /app/
COPY . /ctx/
ADD arch.tar.gz /opt/
ADD own.tar /own/
SHELL ["/bin/sh", "-ec"]
RUN echo $V $A "$B" > /app/env && rm -f /etc/group && rm -rf /app/from-builder/link \
    && chown nobody /app/env && ln -s /app/env /app/envlink && mkdir -p /var/empty && rm -rf /ctx/sub
EXPOSE 80 53/udp
VOLUME ["/data", "/cache"]
USER nobody
STOPSIGNAL SIGINT
HEALTHCHECK --interval=5s --timeout=3s CMD wget -q localhost || exit 1
ONBUILD RUN echo triggered
ENTRYPOINT ["/bin/sh", "-c"]
CMD ["echo hi"]
"""
FIELDS = (
    "Env",
    "Cmd",
    "Entrypoint",
    "WorkingDir",
    "User",
    "ExposedPorts",
    "Volumes",
    "Labels",
    "Healthcheck",
    "StopSignal",
    "Shell",
    "OnBuild",
)


def _tar(entries: list[tuple[str, bytes | None, int, int, int]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data, mode, uid, gid in entries:
            info = tarfile.TarInfo(name)
            info.mode, info.uid, info.gid, info.mtime = mode, uid, gid, 1_600_000_000
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture
def context(tmp_path):
    ctx = tmp_path / "ctx"
    (ctx / "modes" / "inner").mkdir(parents=True)
    (ctx / "sub").mkdir()
    (ctx / "Dockerfile").write_text(DOCKERFILE)
    (ctx / "a.txt").write_text("hello\n")
    (ctx / "b.txt").write_text("bee\n")
    (ctx / "c.secret").write_text("not for the image\n")
    (ctx / "sub" / "s").write_text("s\n")
    (ctx / "modes" / "x").write_text("m\n")
    (ctx / "modes" / "inner" / "y").write_text("y\n")
    os.chmod(ctx / "modes", 0o700)
    os.chmod(ctx / "modes" / "x", 0o640)
    os.chmod(ctx / "b.txt", 0o600)
    os.symlink("a.txt", ctx / "link")
    (ctx / ".dockerignore").write_text("*.secret\n")
    tgz = io.BytesIO()
    with tarfile.open(fileobj=tgz, mode="w:gz") as tar:
        for name, data in (("t/", None), ("t/f", b"in a tgz\n")):
            info = tarfile.TarInfo(name.rstrip("/"))
            info.mtime = 1_600_000_000
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
    (ctx / "arch.tar.gz").write_bytes(tgz.getvalue())
    (ctx / "own.tar").write_bytes(_tar([("d", None, 0o750, 1234, 5678), ("d/f", b"x\n", 0o604, 1234, 5678)]))
    return str(ctx)


@pytest.fixture
def base(rootdir, full_busybox, tmp_path):
    """bb with what buildah's RUN bind-mounts over (else it leaves empty files for them in its layers)."""
    tree = tmp_path / "base"
    shutil.copytree(full_busybox, tree, symlinks=True)
    for name in ("etc/hostname", "etc/hosts", "etc/resolv.conf"):
        (tree / name).write_text("")
    (tree / "run").mkdir()
    strata(
        rootdir,
        "import",
        str(tree),
        "base",
        "--change",
        "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "--change",
        'CMD ["/bin/sh"]',
    )
    return "base"


@pytest.fixture
def buildah(tmp_path):
    b = Buildah(str(tmp_path / "buildah"))
    yield b
    b.close()


def test_an_image_with_every_instruction_is_what_buildah_builds(rootdir, base, context, buildah, tmp_path):
    image = strata(rootdir, "build", "-q", "-t", "mine", context).out.strip()
    assert image.startswith("sha256:")
    strata(rootdir, "save", "-o", str(tmp_path / "base.tar"), base)
    buildah("pull", f"docker-archive:{tmp_path / 'base.tar'}")
    buildah.bud(context, "theirs")

    ours = layers_of(strata_layout(strata, rootdir, "mine", str(tmp_path / "ours")))[1]
    theirs = layers_of(buildah.layout("theirs", str(tmp_path / "theirs")))[1]
    mine, other = flatten(ours), flatten(theirs)
    assert {p: (mine.get(p), other.get(p)) for p in sorted(set(mine) | set(other)) if mine.get(p) != other.get(p)} == {}
    assert "app/from-builder/artifact" in mine and mine["app/from-builder/artifact"].uid == 65534
    assert mine["app/exec"].mode == 0o751 and mine["modes/x"].uid == 65534 and mine["own/d/f"].uid == 1234
    assert mine["app/link"].kind == "file" and mine["app/envlink"].kind == "symlink"
    assert "ctx/c.secret" not in mine and "ctx/a.txt" in mine and "etc/group" not in mine
    assert whiteouts(ours) == whiteouts(theirs) == {"etc/group", "app/from-builder/link", "ctx/sub"}

    config = json.loads(strata(rootdir, "inspect", "mine").out)[0]["Config"]
    docker = json.loads(buildah("inspect", "--type", "image", "theirs"))["Docker"]["config"]
    assert {f: config.get(f) for f in FIELDS} == {f: docker.get(f) for f in FIELDS}
    assert config["Env"] == ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "A=1", "B=two words"]
    assert config["ExposedPorts"] == {"80/tcp": {}, "53/udp": {}}
    assert json.loads(strata(rootdir, "inspect", "mine").out)[0]["Author"] == "someone <someone@example.com>"
