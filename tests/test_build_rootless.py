"""``strata build`` as an ordinary user (the session's throwaway user, tests/rootless_support.py): the
owners a build gives (COPY --chown, ADD's tar, a RUN's chown, copied-up parents) are the ones its
containers see, kept in the override xattr on disk; the cache works the same."""

from __future__ import annotations

import io
import os
import shutil
import tarfile

import pytest
from rootless_support import mounts_below


@pytest.fixture
def scratch(rootless, request):
    path = rootless.make_dir(os.path.join(rootless.home, f"b-{request.node.name}"[:80]))
    yield path
    if not mounts_below([path]):
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def store(rootless, scratch, full_busybox):
    rootfs = os.path.join(scratch, "rootfs")
    shutil.copytree(full_busybox, rootfs, symlinks=True)
    rootless.give(rootfs)
    root = os.path.join(scratch, "store")
    rootless.strata(root, "import", rootfs, "bb", "--change", 'CMD ["/bin/sh"]')
    return root


def test_a_rootless_build_gives_the_owners_its_containers_see(rootless, scratch, store):
    ctx = os.path.join(scratch, "ctx")
    os.makedirs(ctx)
    with open(os.path.join(ctx, "f"), "w") as f:
        f.write("f\n")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("owned")
        info.size, info.uid, info.gid, info.mode = 2, 123, 456, 0o640
        tar.addfile(info, io.BytesIO(b"o\n"))
    with open(os.path.join(ctx, "own.tar"), "wb") as f:
        f.write(buf.getvalue())
    with open(os.path.join(ctx, "Dockerfile"), "w") as f:
        f.write(
            "FROM bb\nCOPY --chown=1000:1000 f /home/f\nADD own.tar /t/\n"
            "RUN mkdir /made && chown 65534:65534 /made && echo x > /made/x && chown 7:7 /made/x "
            "&& echo y > /made/by-root\n"
            "COPY f /made/copied\n"
        )
    rootless.give(ctx)
    # --network none: rootless bridge is pasta's, whose start this host refuses for `run` as well
    image = rootless.strata(store, "build", "-q", "--network", "none", "-t", "rl", ctx).out.strip()
    out = rootless.strata(
        store,
        "run",
        "--rm",
        "--network",
        "none",
        "rl",
        "stat",
        "-c",
        "%n %u:%g %a",
        "/home/f",
        "/t/owned",
        "/made",
        "/made/x",
        "/made/by-root",
        "/made/copied",
    ).out
    assert out.splitlines() == [
        "/home/f 1000:1000 644",
        "/t/owned 123:456 640",
        "/made 65534:65534 755",
        "/made/x 7:7 644",
        "/made/by-root 0:0 644",
        "/made/copied 0:0 644",
    ]
    again = rootless.strata(store, "build", "--progress", "plain", "--network", "none", "-t", "rl", ctx)
    assert again.err.count("CACHED") == 4 and f"writing image {image} done" in again.err
    assert rootless.strata(store, "ps", "-aq").out == ""
