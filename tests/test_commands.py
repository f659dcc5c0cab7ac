"""images, history, tag, rmi, inspect, info and system check behave as Docker's do."""

from __future__ import annotations

import json
import os
import re

from helpers import config_for, docker_v12_save, sha256, strata, tar_bytes


def _load(root, tmp_path, layers, tags, config=None, name="a.tar"):
    path = tmp_path / name
    path.write_bytes(docker_v12_save(layers, tags, config))
    strata(root, "load", "-i", str(path))


def test_images_columns_quiet_and_json(root, tmp_path):
    layer = tar_bytes([{"name": "f", "data": b"x" * 13}])
    _load(root, tmp_path, [layer], ["app:1", "app:2"])
    lines = strata(root, "images").out.splitlines()
    assert re.split(r"\s{2,}", lines[0]) == ["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"]
    assert len(lines) == 3
    assert re.split(r"\s{2,}", lines[1])[0:3] == ["app", "1", sha256(config_for([sha256(layer)]))[7:19]]
    assert lines[1].endswith("13B")
    assert strata(root, "images", "-q").out.split() == [sha256(config_for([sha256(layer)]))[7:19]]
    rows = [json.loads(x) for x in strata(root, "images", "--format", "json").out.splitlines()]
    assert {r["Tag"] for r in rows} == {"1", "2"} and rows[0]["Size"] == "13B"


def test_history_shows_empty_layers_and_missing_ids(root, tmp_path):
    layer = tar_bytes([{"name": "f", "data": b"x" * 13}])
    history = [
        {
            "created": "2024-01-01T00:00:00Z",
            "created_by": "/bin/sh -c #(nop) ADD file:0123456789abcdef0123456789abcdef in /",
        },
        {"created": "2024-01-01T00:00:01Z", "created_by": '/bin/sh -c #(nop)  CMD ["sh"]', "empty_layer": True},
    ]
    _load(root, tmp_path, [layer], ["h:1"], config_for([sha256(layer)], history))
    lines = strata(root, "history", "h:1").out.splitlines()
    assert re.split(r"\s{2,}", lines[0]) == ["IMAGE", "CREATED", "CREATED BY", "SIZE", "COMMENT"]
    assert lines[1].split()[0] == sha256(config_for([sha256(layer)], history))[7:19]
    assert "0B" in lines[1] and lines[2].startswith("<missing>") and "13B" in lines[2]
    full = strata(root, "history", "--no-trunc", "h:1").out
    assert "/bin/sh -c #(nop) ADD file:0123456789abcdef0123456789abcdef in /" in full
    assert "…" in strata(root, "history", "h:1").out  # long CREATED BY truncated to 45


def test_tag_and_rmi_free_unused_layers(root, tmp_path):
    shared = tar_bytes([{"name": "base", "data": b"b"}])
    _load(root, tmp_path, [shared, tar_bytes([{"name": "one", "data": b"1"}])], ["one:1"], name="1.tar")
    _load(root, tmp_path, [shared, tar_bytes([{"name": "two", "data": b"2"}])], ["two:1"], name="2.tar")
    strata(root, "tag", "one:1", "alias:x")
    assert len(os.listdir(os.path.join(root, "layers"))) == 3
    # an image with two tags is not deleted by id without -f
    one_id = json.loads(strata(root, "inspect", "one:1").out)[0]["Id"]
    res = strata(root, "rmi", one_id[7:19], check=False)
    assert res.code != 0 and "must be forced" in res.err
    assert strata(root, "rmi", "alias:x").out.strip() == "Untagged: alias:x"
    out = strata(root, "rmi", "one:1").out.splitlines()
    assert out[0] == "Untagged: one:1" and out[1] == f"Deleted: {one_id}"
    assert len(out) == 3  # the one layer only one:1 used
    assert len(os.listdir(os.path.join(root, "layers"))) == 2  # the shared base stays
    assert not os.path.exists(os.path.join(root, "blobs", "sha256", one_id[7:]))
    strata(root, "rmi", "two:1")
    assert os.listdir(os.path.join(root, "layers")) == [] and os.listdir(os.path.join(root, "images")) == []
    assert os.listdir(os.path.join(root, "blobs", "sha256")) == []
    res = strata(root, "rmi", "two:1", check=False)
    assert res.code == 1 and res.err.strip() == "Error: No such image: two:1"


def test_inspect_image_fields(root, busybox_rootfs):
    strata(root, "import", busybox_rootfs, "bb:1", "--change", 'CMD ["/bin/sh"]', "--change", "ENV A=1")
    d = json.loads(strata(root, "inspect", "bb:1").out)[0]
    assert d["RepoTags"] == ["bb:1"] and d["Config"]["Cmd"] == ["/bin/sh"] and d["Config"]["Env"] == ["A=1"]
    assert d["RootFS"]["Type"] == "layers" and len(d["RootFS"]["Layers"]) == 1
    assert os.path.isfile(os.path.join(d["GraphDriver"]["Data"]["UpperDir"], "bin", "busybox"))
    assert d["Size"] == os.path.getsize(os.path.join(d["GraphDriver"]["Data"]["UpperDir"], "bin", "busybox")) + 7
    assert d["History"][0]["comment"].startswith("Imported from")
    res = strata(root, "inspect", "nosuch", check=False)
    assert res.code == 1 and res.err.strip() == "Error: No such object: nosuch"  # as docker inspect says


def test_info_counts(root, busybox_rootfs):
    strata(root, "import", busybox_rootfs, "bb:1")
    strata(root, "tag", "bb:1", "bb:2")
    info = json.loads(strata(root, "info", "--format", "json").out)
    assert info == {
        "Root": os.path.abspath(root),
        "Images": 1,
        "Tags": 2,
        "Layers": 1,
        "Blobs": 2,
        "Containers": 0,
        "Running": 0,
    }


def test_system_check_finds_damage(root, busybox_rootfs):
    strata(root, "import", busybox_rootfs, "bb:1")
    assert strata(root, "system", "check").out.strip() == "store is consistent"
    d = json.loads(strata(root, "inspect", "bb:1").out)[0]
    blobs = os.path.join(root, "blobs", "sha256")
    layer_blob = next(b for b in os.listdir(blobs) if b != d["Id"][7:])
    with open(os.path.join(blobs, layer_blob), "r+b") as f:
        f.seek(600)
        f.write(b"DAMAGE")
    res = strata(root, "system", "check", check=False)
    assert res.code == 1 and f"blob sha256:{layer_blob}: content does not match its digest" in res.out


def test_id_prefixes_resolve(root, busybox_rootfs):
    image_id = strata(root, "import", busybox_rootfs, "bb:1").out.strip()
    for ref in (image_id, image_id[7:], image_id[7:11], "sha256:" + image_id[7:13]):
        assert json.loads(strata(root, "inspect", ref).out)[0]["Id"] == image_id


def _run_with_stderr_tty(root: str, *args: str) -> tuple[int, bytes]:
    import pty
    import subprocess

    from helpers import REPO, STRATA

    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [*STRATA, "--root", root, *args],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=slave,
        env={**os.environ, "PYTHONPATH": REPO},
    )
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the pty
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    return proc.wait(), b"".join(chunks)


def test_progress_bar_on_a_terminal_only(root, tmp_path, busybox_rootfs):
    strata(root, "import", busybox_rootfs, "bb:1")
    saved = tmp_path / "bb.tar"
    strata(root, "save", "-o", str(saved), "bb:1")
    code, err = _run_with_stderr_tty(str(tmp_path / "tty"), "load", "-i", str(saved))
    assert code == 0 and b": Loading layer [" in err and b": Loaded 2MB" in err  # per layer
    quiet = strata(str(tmp_path / "pipe"), "load", "-i", str(saved))
    assert quiet.err == ""


def test_root_comes_from_strata_root(tmp_path, busybox_rootfs):
    import subprocess

    from helpers import REPO, STRATA

    env = {**os.environ, "PYTHONPATH": REPO, "STRATA_ROOT": str(tmp_path / "envroot")}
    subprocess.run([*STRATA, "import", busybox_rootfs, "bb:1"], cwd=REPO, env=env, check=True, capture_output=True)
    out = subprocess.run([*STRATA, "info"], cwd=REPO, env=env, check=True, capture_output=True, text=True).stdout
    assert out.splitlines()[0] == f"Root: {tmp_path / 'envroot'}"
    assert os.path.isdir(tmp_path / "envroot" / "layers")
