"""Listing and lookup as a Docker user types them: images REPO[:TAG] and -f, ps -f and --no-trunc,
logs -t and --since, inspect -f and --type, the keys scripts read from a container's inspect, the
layer tree's image ids, and library/NAME as Docker's familiar name."""

from __future__ import annotations

import json
import os
import re
from datetime import datetime

import pytest
from helpers import config_for, docker_v12_save, sha256, strata, tar_bytes

from runner.cli.listing import parse_since, ps_command
from runner.cli.template import render

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="containers need root")


def _column(out: str, index: int) -> list[str]:
    return [re.split(r"\s{2,}", line)[index] for line in out.splitlines()[1:]]


def _load(root, tmp_path, name, files, tags, **config):
    layer = tar_bytes([{"name": n, "data": d} for n, d in files.items()])
    path = tmp_path / f"{name}.tar"
    path.write_bytes(docker_v12_save([layer], tags, config_for([sha256(layer)], **config) if config else None))
    strata(root, "load", "-i", str(path))
    return json.loads(strata(root, "inspect", tags[0]).out)[0]["Id"] if tags else None


def test_images_by_repository_tag_and_pattern(root, tmp_path):
    _load(root, tmp_path, "a", {"a": b"1"}, ["app:1", "app:2", "other:1"])
    assert _column(strata(root, "images", "app").out, 1) == ["1", "2"]
    assert _column(strata(root, "images", "app:2").out, 1) == ["2"]
    assert _column(strata(root, "images", "o*").out, 0) == ["other"]
    assert strata(root, "images", "nosuch").out.splitlines()[1:] == []


def test_library_name_is_the_familiar_name(root, tmp_path):
    _load(root, tmp_path, "a", {"a": b"1"}, ["busybox:1"])
    for spelling in ("library/busybox:1", "docker.io/library/busybox:1", "docker.io/busybox:1", "busybox:1"):
        assert json.loads(strata(root, "inspect", spelling).out)[0]["RepoTags"] == ["busybox:1"], spelling
        assert _column(strata(root, "images", spelling).out, 0) == ["busybox"], spelling
    strata(root, "tag", "busybox:1", "library/busybox:2")
    strata(root, "tag", "busybox:1", "library/deep/name:1")  # not an official image: keeps library/
    assert sorted(_column(strata(root, "images").out, 0)) == ["busybox", "busybox", "library/deep/name"]


def test_images_filters(root, tmp_path):
    old = _load(
        root,
        tmp_path,
        "old",
        {"o": b"1"},
        ["old:1"],
        created="2020-01-01T00:00:00Z",
        **{"config": {"Labels": {"tier": "base"}}},
    )
    _load(root, tmp_path, "mid", {"m": b"1"}, ["mid:1"], created="2022-01-01T00:00:00Z")
    _load(
        root,
        tmp_path,
        "new",
        {"n": b"1"},
        ["new:1"],
        created="2024-01-01T00:00:00Z",
        **{"config": {"Labels": {"tier": "app"}}},
    )
    assert _column(strata(root, "images", "-f", "label=tier").out, 0) == ["new", "old"]
    assert _column(strata(root, "images", "--filter", "label=tier=base").out, 0) == ["old"]
    assert _column(strata(root, "images", "-f", "before=mid:1").out, 0) == ["old"]
    assert _column(strata(root, "images", "-f", "since=mid:1").out, 0) == ["new"]
    assert _column(strata(root, "images", "-f", "reference=n*", "-f", "reference=old").out, 0) == ["new", "old"]
    strata(root, "rmi", "old:1", check=False)  # untagging its only tag removes it: dangling needs another way
    strata(root, "tag", "mid:1", "keep:1")
    strata(root, "rmi", "mid:1")  # keep:1 still names it
    assert strata(root, "images", "-f", "dangling=true", "-q").out == ""
    assert _column(strata(root, "images", "-f", "dangling=false").out, 0) == ["new", "keep"]
    res = strata(root, "images", "-f", "colour=red", check=False)
    assert (res.code, res.err) == (1, "Error: invalid filter 'colour'\n")
    assert old


def test_images_no_trunc_and_tree_show_image_ids(root, tmp_path):
    base = tar_bytes([{"name": "base", "data": b"b"}])
    top = tar_bytes([{"name": "top", "data": b"t"}])
    path = tmp_path / "two.tar"
    path.write_bytes(docker_v12_save([base, top], ["two:1"]))
    strata(root, "load", "-i", str(path))
    image_id = json.loads(strata(root, "inspect", "two:1").out)[0]["Id"]
    assert strata(root, "images", "-q", "--no-trunc").out.strip() == image_id
    short = strata(root, "images", "-q").out.strip()
    tree = strata(root, "images", "--tree").out.splitlines()
    assert tree[0].startswith("└─layer ") and "Tags" not in tree[0]  # the base layer: no image of its own
    assert tree[1].startswith(f"  └─{short} ") and tree[1].endswith("Tags: two:1")  # the id `images` prints


def test_ps_command_quote_is_closed_when_truncated():
    assert ps_command(["sh", "-c", "echo one; echo two >&2"], True) == '"sh -c echo one; ech…"'
    assert ps_command(["sleep", "300"], True) == '"sleep 300"'
    assert ps_command(["sh", "-c", "echo one; echo two >&2"], False) == '"sh -c echo one; echo two >&2"'


def test_go_templates_render_as_docker_prints():
    doc = {
        "State": {"Status": "running", "Pid": 7},
        "Config": {"Labels": {"b": "2", "a": "1"}, "Cmd": ["sh", "-c"], "Entrypoint": None},
        "Tty": False,
    }
    assert render("{{.State.Status}}", doc) == "running"
    assert render("pid={{ .State.Pid }} tty={{.Tty}}", doc) == "pid=7 tty=false"
    assert (
        render("{{json .Config.Labels}}", doc) == '{"b":"2","a":"1"}'
    )  # compact, as Go's (keys in the document's order)
    assert render("{{.Config.Labels | json}}", doc) == '{"b":"2","a":"1"}'
    assert render('{{.Config.Labels}} {{.Config.Cmd}} {{join .Config.Cmd ","}}', doc) == "map[a:1 b:2] [sh -c] sh,-c"
    assert render('{{index .Config.Labels "a"}} {{upper .State.Status}} {{len .Config.Cmd}}', doc) == "1 RUNNING 2"
    assert render("{{.Config.Entrypoint}}", doc) == "<no value>"
    assert render("{{range $k, $v := .Config.Labels}}{{$k}}={{$v}} {{end}}", doc) == "a=1 b=2 "  # (sorted, as Go's)
    assert render("{{if .Tty}}tty{{else if .State.Pid}}pid{{end}}", doc) == "pid"
    assert (
        render("{{range .Config.Cmd}}[{{.}}]{{else}}none{{end}} {{with .State}}{{.Status}}{{end}}", doc)
        == "[sh][-c] running"
    )
    assert (
        render('{{printf "%s/%d" .State.Status .State.Pid}} {{(index .Config.Cmd 1) | upper}}', doc) == "running/7 -C"
    )
    for bad in (
        "{{.Nope}}",
        "{{.State.Status.X}}",
        "{{bogus .State}}",
        "{{.State",
        "{{range .Config.Cmd}}",
        "{{end}}",
        '{{template "x"}}',
        '{{.State.Status "arg"}}',
    ):
        with pytest.raises(Exception, match="template parsing error"):
            render(bad, doc)


def test_since_takes_times_unix_seconds_and_durations():
    now = 1_700_000_000.0
    assert parse_since("10m", now) == now - 600
    assert parse_since("1h30m", now) == now - 5400
    assert parse_since("1699999999.5", now) == 1699999999.5
    assert parse_since("2024-01-02T03:04:05Z") == datetime.fromisoformat("2024-01-02T03:04:05+00:00").timestamp()
    assert parse_since("2024-01-02") == datetime.fromisoformat("2024-01-02T00:00:00+00:00").timestamp()
    with pytest.raises(Exception, match="invalid value for --since"):
        parse_since("yesterday")


@needs_root
def test_ps_filters_and_no_trunc(rootdir):
    strata(rootdir, "run", "-d", "--name", "up-one", "-l", "team=a", "bb", "sleep", "300")
    strata(rootdir, "run", "--name", "done-two", "-l", "team=b", "bb", "sh", "-c", "echo a long command line here")
    ids = {name: json.loads(strata(rootdir, "inspect", name).out)[0]["Id"] for name in ("up-one", "done-two")}
    names = lambda *args: _column(strata(rootdir, "ps", *args).out, -1)  # noqa: E731
    assert names() == ["up-one"]
    assert names("-f", "status=exited") == ["done-two"]  # a status filter looks at every container
    assert sorted(names("-a", "-f", "label=team")) == ["done-two", "up-one"]
    assert names("-a", "-f", "label=team=b") == ["done-two"]
    assert names("-a", "-f", "name=^up") == ["up-one"]
    assert names("-a", "-f", f"id={ids['done-two'][:5]}") == ["done-two"]
    assert sorted(names("-a", "-f", "ancestor=bb")) == ["done-two", "up-one"]
    assert names("-a", "-f", "ancestor=bb", "-f", "status=running") == ["up-one"]
    assert strata(rootdir, "ps", "-aq", "--no-trunc", "-f", "name=two").out.strip() == ids["done-two"]
    full = strata(rootdir, "ps", "-a", "--no-trunc", "-f", "name=two").out
    assert '"sh -c echo a long command line here"' in full and ids["done-two"] in full
    assert '"sh -c echo a long c…"' in strata(rootdir, "ps", "-a", "-f", "name=two").out
    header = strata(rootdir, "ps").out.splitlines()[0]  # Docker's columns, in Docker's order
    assert re.split(r"  +", header.strip()) == [
        "CONTAINER ID",
        "IMAGE",
        "COMMAND",
        "CREATED",
        "STATUS",
        "PORTS",
        "NAMES",
    ], header
    res = strata(rootdir, "ps", "-f", "status=sleeping", check=False)
    assert (res.code, res.err) == (125, "Error: invalid filter 'status=sleeping'\n")


@needs_root
def test_logs_timestamps_and_since(rootdir):
    strata(rootdir, "run", "--name", "talk", "bb", "sh", "-c", "echo one; echo two >&2")
    res = strata(rootdir, "logs", "-t", "talk")
    stamp = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z "
    assert re.fullmatch(stamp + "one\n", res.out) and re.fullmatch(stamp + "two\n", res.err)
    assert strata(rootdir, "logs", "--since", "1h", "talk").out == "one\n"
    assert strata(rootdir, "logs", "--since", "2999-01-01T00:00:00Z", "talk").out == ""
    first = res.out.split()[0]
    assert strata(rootdir, "logs", "--timestamps", "--since", first, "talk").out == res.out


@needs_root
def test_inspect_format_type_and_the_keys_scripts_read(rootdir):
    strata(rootdir, "run", "-d", "--name", "web", "-l", "app=web", "bb", "sleep", "300")
    doc = json.loads(strata(rootdir, "inspect", "web").out)[0]
    for key in (
        "Mounts",
        "NetworkSettings",
        "RestartCount",
        "ResolvConfPath",
        "HostnamePath",
        "HostsPath",
        "LogPath",
        "Driver",
        "Platform",
    ):
        assert key in doc, key
    assert doc["Config"]["Labels"] == {"app": "web"} and doc["Mounts"] == [] and doc["RestartCount"] == 0
    assert doc["Platform"] == "linux" and doc["Driver"] == "strata-unionfs"
    for key in ("ResolvConfPath", "HostnamePath", "HostsPath", "LogPath"):
        assert os.path.isfile(doc[key]), key
    with open(doc["HostnamePath"]) as f:
        assert f.read().strip() == doc["Id"][:12]
    net = doc["NetworkSettings"]
    # the default network: an address of strata0's subnet, the bridge's as gateway, no port published
    assert list(net["Networks"]) == ["bridge"] and net["Bridge"] == "strata0" and net["Ports"] == {}
    assert net["IPAddress"].startswith("10.66.") and net["Gateway"] == "10.66.0.1" and net["IPPrefixLen"] == 16
    assert net["Networks"]["bridge"]["IPAddress"] == net["IPAddress"] and net["MacAddress"].startswith("02:42:")
    assert net["SandboxKey"] == f"/proc/{doc['State']['Pid']}/ns/net"
    assert strata(rootdir, "inspect", "-f", "{{.State.Status}} {{.Name}}", "web").out == "running /web\n"
    assert json.loads(strata(rootdir, "inspect", "--format", "{{json .Config}}", "web").out)["Labels"] == {"app": "web"}
    out = strata(rootdir, "inspect", "-f", "{{.Id}}", "web", "bb").out.split()
    assert out[0] == doc["Id"] and out[1] == doc["Image"]
    assert strata(rootdir, "inspect", "--type", "image", "-f", "{{.Id}}", "bb").out.strip() == doc["Image"]
    res = strata(rootdir, "inspect", "--type", "container", "bb", check=False)
    assert res.code == 1 and res.err == "Error: No such container: bb\n"
    res = strata(rootdir, "inspect", "--type", "image", "web", check=False)
    assert res.code == 1 and res.err == "Error: No such image: web\n"
    res = strata(rootdir, "inspect", "-f", "{{.Nope}}", "web", check=False)
    assert res.code == 1 and res.err.startswith("Error: template parsing error")
