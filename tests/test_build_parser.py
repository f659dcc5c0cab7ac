"""The build's pure parts, with no container or store: the Dockerfile parser (BuildKit's rules), the
shell lexer's expansion, .dockerignore's patterns, Docker's history spellings and the plan a
Dockerfile gives (what each step records, what the cache keys on)."""

from __future__ import annotations

import os

import pytest

from runner.build import history, words
from runner.build.dockerignore import Matcher, read_patterns
from runner.build.errors import BuildError
from runner.build.instructions import load
from runner.build.parser import parse
from runner.build.plan import Options, Planner
from runner.build.trees import Checksums, DirTree, Escape, glob, go_match, resolve

BASE = {"config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"]}, "history": [{}], "rootfs": {"diff_ids": []}}


def plan(text: str, images: dict | None = None, **options):
    known = {"bb": ("sha256:" + "b" * 64, BASE), **(images or {})}
    return Planner(load(text), Options(**options), lambda ref: known.get(ref)).plan()


def steps(text: str, **options):
    p = plan(text, **options)
    return [s for stage in p.stages.values() for s in stage.steps]


# -- parser -----------------------------------------------------------------------------------------
def test_continuations_keep_the_next_lines_white_space_and_skip_comment_and_empty_lines():
    nodes = parse("FROM bb\nRUN apt-get update \\\n    # a comment inside\n\n    && echo done\nCMD x\n").nodes
    assert [(n.keyword, n.line, n.end_line) for n in nodes] == [("FROM", 1, 1), ("RUN", 2, 5), ("CMD", 6, 6)]
    assert nodes[1].args == "apt-get update     && echo done"


def test_escape_directive_changes_the_continuation_character_and_only_counts_at_the_top():
    nodes = parse("# escape=`\nFROM bb\nRUN dir c:\\ `\n  && echo x\n").nodes
    assert parse("# escape=`\nFROM bb\n").escape == "`"
    assert nodes[1].args == "dir c:\\   && echo x"
    assert parse("FROM bb\n# escape=`\nRUN a \\\n b\n").escape == "\\"  # after an instruction: a comment
    assert parse("# syntax=docker/dockerfile:1\n# escape=`\nFROM bb\n").directives == {
        "syntax": "docker/dockerfile:1",
        "escape": "`",
    }
    with pytest.raises(BuildError, match="Dockerfile:1: invalid escape token"):
        parse("# escape=x\nFROM bb\n")
    with pytest.raises(BuildError, match="Dockerfile:2: only one escape parser directive"):
        parse("# escape=`\n# escape=\\\nFROM bb\n")


def test_heredocs_take_the_following_lines_up_to_their_name():
    nodes = parse("FROM bb\nRUN <<EOF\necho a\n  echo b\nEOF\nCOPY <<-'END' /x\n\tkept $X\n\tEND\nCMD y\n").nodes
    run, copy, cmd = nodes[1:]
    assert (run.line, run.end_line, run.heredocs[0].content, run.heredocs[0].expand) == (
        2,
        5,
        "echo a\n  echo b\n",
        True,
    )
    assert copy.heredocs[0].name == "END" and not copy.heredocs[0].expand and copy.heredocs[0].chomp
    assert copy.heredocs[0].content == "kept $X\n" and cmd.line == 9
    with pytest.raises(BuildError, match="Dockerfile:2: unterminated heredoc EOF"):
        parse("FROM bb\nRUN <<EOF\necho\n")


def test_every_mistake_is_refused_with_its_line():
    cases = {
        "FROM bb\nFOO bar\n": "Dockerfile:2: unknown instruction: FOO",
        "RUN true\nFROM bb\n": "Dockerfile:1: RUN before the first FROM",
        "FROM bb AS\n": "Dockerfile:1: FROM requires either one or three arguments",
        "FROM bb AS 1x\n": "Dockerfile:1: invalid name for build stage",
        "FROM bb AS a\nFROM bb AS a\n": "Dockerfile:2: duplicate stage name 'a'",
        "FROM bb\nSHELL /bin/bash -c\n": "Dockerfile:2: SHELL requires the arguments to be in JSON form",
        "FROM bb\nCOPY onlyone\n": "Dockerfile:2: COPY requires at least two arguments",
        "FROM bb\nCOPY --nope=1 a b\n": "Dockerfile:2: unknown flag: --nope",
        "FROM bb\nRUN --mount=type=cache,target=/x true\n": "Dockerfile:2: RUN --mount is a BuildKit extension",
        "FROM bb\nENV\n": "Dockerfile:2: ENV requires at least one argument",
        "FROM bb\nENV a=1 b\n": "Dockerfile:2: syntax error - can't find = in 'b'",
        "FROM bb\nENV lonely\n": "Dockerfile:2: ENV must have two arguments",
        "FROM bb\nHEALTHCHECK NONE x\n": "Dockerfile:2: HEALTHCHECK NONE takes no arguments",
        "FROM bb\nHEALTHCHECK RUN x\n": 'Dockerfile:2: unknown type "RUN" in HEALTHCHECK',
        "FROM bb\nONBUILD ONBUILD RUN x\n": "Dockerfile:2: chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed",
        "FROM bb\nONBUILD FROM x\n": "Dockerfile:2: FROM isn't allowed as an ONBUILD trigger",
        "FROM bb\nWORKDIR\n": "Dockerfile:2: WORKDIR requires exactly one argument",
        "# only a comment\n": "Dockerfile: the Dockerfile has no FROM",
    }
    for text, message in cases.items():
        with pytest.raises(BuildError) as caught:
            load(text)
        assert str(caught.value).startswith(message), (text, str(caught.value))
        assert "\n" not in str(caught.value)


def test_forms_are_read_as_docker_reads_them():
    df = load(
        'ARG V=1\nFROM bb\nRUN ["echo", "a b"]\nRUN echo "a b"\nENV A hello  world\nENV B="x y" C=z\n'
        'ARG X Y=2\nCOPY --from=0 --chown=1:2 a b /d/\nVOLUME ["/v1", "/v2"]\nEXPOSE 80 53/udp\n'
        "RUN [not json\n"
    )
    ins = df.stages[0].instructions
    assert df.meta_args[0].pairs == [("V", "1")]
    assert ins[0].exec == ["echo", "a b"] and ins[1].exec is None and ins[1].text == 'echo "a b"'
    assert ins[2].pairs == [("A", "hello  world")] and ins[3].pairs == [("B", '"x y"'), ("C", "z")]
    assert ins[4].pairs == [("X", None), ("Y", "2")]
    assert ins[5].flags == {"from": "0", "chown": "1:2"} and ins[5].words == ["a", "b", "/d/"]
    assert ins[6].words == ["/v1", "/v2"] and ins[7].words == ["80", "53/udp"]
    assert ins[8].exec is None and ins[8].text == "[not json"  # not JSON: the shell form, as Docker


# -- the lexer ---------------------------------------------------------------------------------------
def test_expansion_follows_buildkits_shell_lexer():
    env = {"A": "apple", "E": "", "P": "/usr/local/bin/tool.tar.gz"}
    cases = {
        "$A ${A}": "apple apple",
        "${B:-dflt}": "dflt",
        "${E:-dflt}": "dflt",
        "${E-dflt}": "",
        "${A:+set}": "set",
        "${B:+set}": "",
        "'$A'": "$A",
        '"$A b"': "apple b",
        r"\$A": "$A",
        '"a\\"b"': 'a"b',
        "${P##*/}": "tool.tar.gz",
        "${P#*/}": "usr/local/bin/tool.tar.gz",
        "${P%.*}": "/usr/local/bin/tool.tar",
        "${P%%.*}": "/usr/local/bin/tool",
        "${A/p/P}": "aPple",
        "${A//p/P}": "aPPle",
        "$": "$",
        "a$1b": "ab",
    }
    for text, expected in cases.items():
        assert words.expand(text, env) == expected, text
    assert words.expand_words('$A "b c" d', env) == ["apple", "b c", "d"]
    assert words.expand_words("$X", {"X": "80 443"}) == ["80", "443"]
    for bad in ("${A", "'open", "${:x}", "${B:?must be set}"):
        with pytest.raises(ValueError):
            words.expand(bad, env)


# -- .dockerignore -------------------------------------------------------------------------------
def test_dockerignore_patterns_follow_dockers_rules():
    text = "# comment\n*.log\n/build\n**/*.tmp\n!keep.log\ndocs/**\n!docs/README.md\nsub/*/x\n"
    assert read_patterns(text) == ["*.log", "build", "**/*.tmp", "!keep.log", "docs/**", "!docs/README.md", "sub/*/x"]
    m = Matcher(read_patterns(text))
    excluded = [
        "a.log",
        "build",
        "build/out/bin",
        "x.tmp",
        "deep/er/x.tmp",
        "docs/guide.md",
        "sub/a/x",
        "sub/a/x/inside",
    ]
    kept = ["keep.log", "dir/a.log", "src/main.c", "docs/README.md", "sub/a/b/x", "builder"]
    assert [p for p in excluded if not m.excluded(p)] == []
    assert [p for p in kept if m.excluded(p)] == []
    assert not Matcher(["*"]).excluded(".")  # the context itself never goes


def test_glob_matches_as_go_filepath_match():
    assert go_match("*.txt", "a.txt") and not go_match("*.txt", "d/a.txt") and go_match("d/?.txt", "d/a.txt")
    assert go_match("[a-c]x", "bx") and not go_match("[^a-c]x", "bx") and go_match(r"\*", "*")


def test_context_paths_never_leave_the_context(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_text("x")
    os.symlink("d/f", tmp_path / "inside")
    os.symlink("/etc/passwd", tmp_path / "abs")
    os.symlink("../../etc", tmp_path / "d" / "up")
    (tmp_path / "t1.txt").write_text("1")
    (tmp_path / "t2.txt").write_text("2")
    tree = DirTree(str(tmp_path))
    assert resolve(tree, "inside") == "d/f"
    for bad in ("abs", "d/up/passwd", "../x"):
        with pytest.raises(Escape):
            resolve(tree, bad)
    assert glob(tree, "t*.txt") == ["t1.txt", "t2.txt"]


def test_checksums_change_with_content_mode_and_owner_not_with_time(tmp_path):
    f = tmp_path / "f"
    f.write_text("one")
    os.mkdir(tmp_path / "d")
    (tmp_path / "d" / "g").write_text("g")

    def sums():
        c = Checksums(DirTree(str(tmp_path)))
        return c.of("f"), c.of("d")

    first = sums()
    assert first[0].startswith("file:") and first[1].startswith("dir:")
    os.utime(f, (1, 1))
    assert sums() == first
    f.write_text("two")
    assert sums()[0] != first[0] and sums()[1] == first[1]
    second = sums()
    os.chmod(f, 0o600)
    assert sums()[0] != second[0]
    (tmp_path / "d" / "g").write_text("G")
    assert sums()[1] != first[1]


# -- history strings ------------------------------------------------------------------------------
def test_go_formatting_of_history_comments():
    assert history.go_quote('a "b"\n\x01é') == '"a \\"b\\"\\n\\x01é"'
    assert history.go_strings_q(["sh", "-c", "echo hi"]) == '["sh" "-c" "echo hi"]'
    assert history.go_strings_v(["/data", "/x"]) == "[/data /x]"
    assert [history.go_duration(history.parse_duration(d)) for d in ("30s", "1m30s", "1.5s", "500ms", "2h")] == [
        "30s",
        "1m30s",
        "1.5s",
        "500ms",
        "2h0m0s",
    ]
    health = {"Test": ["CMD-SHELL", "curl -f x || exit 1"], "Interval": 5_000_000_000, "Retries": 3}
    assert history.healthcheck_q(health) == '&{["CMD-SHELL" "curl -f x || exit 1"] "5s" "0s" "0s" "0s" \'\\x03\'}'


# -- the plan ---------------------------------------------------------------------------------------
def test_steps_record_dockers_created_by_strings():
    got = [
        " ".join(s.probe)
        for s in steps(
            'FROM bb\nARG V=1\nENV A=1 B="two words"\nWORKDIR app\nRUN echo $V\nCMD ["sh"]\nEXPOSE 80\n'
            'VOLUME /data\nSHELL ["/bin/bash", "-c"]\nUSER nobody\nLABEL k=v\n'
        )
    ]
    assert got == [
        "/bin/sh -c #(nop)  ARG V=1",
        "/bin/sh -c #(nop)  ENV A=1 B=two words",
        "/bin/sh -c #(nop) WORKDIR /app",
        "|1 V=1 /bin/sh -c echo $V",
        '/bin/sh -c #(nop)  CMD ["sh"]',
        "/bin/sh -c #(nop)  EXPOSE 80",
        "/bin/sh -c #(nop)  VOLUME [/data]",
        "/bin/sh -c #(nop)  SHELL [/bin/bash -c]",
        "/bin/bash -c #(nop)  USER nobody",
        "/bin/bash -c #(nop)  LABEL k=v",
    ]


def test_args_env_and_entrypoint_follow_the_classic_builder():
    text = (
        "ARG G=global\nARG ONLY\nFROM bb\nARG G\nARG D=default\nARG ONLY\nENV D=env\nRUN x\n"
        'CMD ["c"]\nENTRYPOINT ["e"]\n'
    )
    run = steps(text, build_args={"ONLY": "given"})[4]
    assert run.probe[:4] == ["|2", "G=global", "ONLY=given", "/bin/sh"]  # D: ENV wins over the ARG
    assert "D=env" in run.env and "G=global" in run.env and "ONLY=given" in run.env
    final = steps(text)[-1].config
    assert final["Entrypoint"] == ["e"] and final["Cmd"] == ["c"]  # a CMD of this stage stays
    assert steps('FROM bb\nENTRYPOINT ["e"]\n')[-1].config["Cmd"] is None  # the image's goes
    assert steps("FROM bb\nEXPOSE 8000-8001/udp 80\n")[-1].config["ExposedPorts"] == {
        "8000/udp": {},
        "8001/udp": {},
        "80/tcp": {},
    }  # a range is every port in it, as moby's parsePortSpecs
    assert steps("FROM bb\nENV PATH=/x:$PATH A=$PATH\n")[-1].config["Env"] == ["PATH=/x:/bin", "A=/bin"]  # all: the old
    assert steps("FROM scratch\nENV A=1\n")[-1].config["Env"] == [
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "A=1",
    ]


def test_only_the_stages_the_target_needs_are_planned():
    text = (
        "FROM bb AS base\nRUN a\nFROM bb AS unused\nRUN b\nFROM base AS mid\nRUN c\n"
        "FROM bb\nCOPY --from=mid /x /x\nCOPY --from=0 /y /y\n"
    )
    p = plan(text)
    assert sorted(p.stages) == [0, 2, 3] and p.target == 3
    assert p.stages[3].base_vertex == "[stage-3 1/3] FROM docker.io/library/bb:latest"
    assert [s.vertex for s in p.stages[3].steps] == [
        "[stage-3 2/3] COPY --from=mid /x /x",
        "[stage-3 3/3] COPY --from=0 /y /y",
    ]
    assert [s.vertex for s in p.stages[2].steps] == ["[mid 1/1] RUN c"]  # FROM a stage: no step of its own
    assert sorted(plan(text, target="mid").stages) == [0, 2]
    with pytest.raises(BuildError, match="target stage 'nope' could not be found"):
        plan(text, target="nope")
    with pytest.raises(BuildError, match="Dockerfile:1: FROM missing: no such image"):
        plan("FROM missing\n")


def test_labels_from_the_command_line_are_a_last_label_step():
    last = steps("FROM bb\nRUN x\n", labels={"b": "2", "a": "one two"})[-1]
    assert " ".join(last.probe) == "/bin/sh -c #(nop)  LABEL a=one two b=2"
    assert last.config["Labels"] == {"a": "one two", "b": "2"}


def test_a_base_images_onbuild_triggers_run_first():
    base = {"config": {"Env": ["PATH=/bin"], "OnBuild": ["RUN echo triggered"]}, "history": [{}]}
    p = plan("FROM trig\nRUN echo mine\n", images={"trig": ("sha256:" + "c" * 64, base)})
    got = [(s.vertex, s.probe[-1]) for s in p.stages[0].steps]
    assert got == [("[2/3] ONBUILD RUN echo triggered", "echo triggered"), ("[3/3] RUN echo mine", "echo mine")]
    assert "OnBuild" not in p.stages[0].steps[-1].config
