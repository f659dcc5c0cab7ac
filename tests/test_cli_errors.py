"""Bad command-line input gets one clear line (usage errors: a line and a hint to --help), Docker's
exit codes, no traceback, and changes nothing: no container, no file outside the store."""

from __future__ import annotations

import json
import os

import pytest
from helpers import strata

from runner.cli import main

PAGE = os.sysconf("SC_PAGE_SIZE")

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="containers need root (rootless is another issue)")


def _host_config(root: str, ref: str) -> dict:
    return json.loads(strata(root, "inspect", ref).out)[0]["HostConfig"]


def _one_line(res, code: int, text: str) -> None:
    assert res.code == code, (res.code, res.err)
    assert "Traceback" not in res.err
    lines = res.err.strip().splitlines()
    assert len(lines) == 1 and text in lines[0], res.err


def _usage(res, first: str, hint: str) -> None:
    """Docker's usage error: exit 125, the problem on one line, then where to look."""
    assert res.code == 125, (res.code, res.err)
    assert res.err.splitlines() == [first, hint], res.err
    assert res.out == ""


def _no_containers(root: str) -> None:
    assert strata(root, "ps", "-a", "-q").out == ""


# -- memory sizes -------------------------------------------------------------------------------------
def test_ram_in_bytes_is_docker_grammar_with_exact_arithmetic():
    from runner.cli.units import ram_in_bytes

    assert ram_in_bytes("9007199254740993") == 9007199254740993  # 2**53 + 1: a float loses it
    assert ram_in_bytes("0.1k") == 102
    assert ram_in_bytes("1.5 GiB") == 3 << 29
    assert ram_in_bytes("8191.999999999999999999999999p") == 8191 * 2**50 + 2**50 - 1
    assert ram_in_bytes("64M") == ram_in_bytes("64mb") == ram_in_bytes("64mi") == 64 << 20
    assert ram_in_bytes("10b") == ram_in_bytes("10ib") == 10
    assert ram_in_bytes("0" * 5000 + "7m") == 7 << 20  # no int-size limit trips on leading zeros
    assert ram_in_bytes("1." + "0" * 5000 + "1k") == 1024
    for bad in ("lots", "1.2.3m", "-1m", "1 m b", "1mm", "m", "1e9", " 1m", "1m\n", "١٢m", "1\u212a"):
        with pytest.raises(Exception, match="invalid memory value"):
            ram_in_bytes(bad)


def test_parse_memory_refuses_what_cannot_be_in_force_and_rounds_to_pages():
    from runner.cli.units import MAX_MEMORY, parse_memory

    assert parse_memory("10000001") == 10000001 // PAGE * PAGE
    assert parse_memory("0") == 0  # Docker: no limit
    assert parse_memory(str(MAX_MEMORY)) == MAX_MEMORY // PAGE * PAGE
    for big in (str(MAX_MEMORY + 1), "8192p", "16777216t", "18446744073809551616", "9" * 5000):
        with pytest.raises(Exception, match="larger than the largest limit"):
            parse_memory(big)
    with pytest.raises(Exception, match="Minimum memory limit allowed is 6MB"):
        parse_memory("6291455")


@needs_root
def test_inspect_shows_the_memory_limit_the_kernel_enforces(rootdir):
    strata(rootdir, "run", "--name", "mem", "-m", "10000001", "bb", "true")
    hc = _host_config(rootdir, "mem")
    assert PAGE != 4096 or hc["Memory"] == 9998336
    assert (hc["Memory"], hc["MemorySwap"]) == (10000001 // PAGE * PAGE, 2 * (10000001 // PAGE * PAGE))


@needs_root
@pytest.mark.parametrize("value", ["16777216t", "18446744073809551616", "8192p"])
def test_memory_above_the_largest_limit_is_refused(rootdir, value):
    res = strata(rootdir, "run", "-m", value, "bb", "true", check=False)
    _one_line(res, 125, f'invalid memory value "{value}": larger than the largest limit')
    _no_containers(rootdir)


# -- cpu shares ---------------------------------------------------------------------------------------
@needs_root
def test_cpu_shares_stored_as_the_daemon_adjusts_them(rootdir):
    for name, given, effective in (
        ("neg", "-5", 2),
        ("one", "1", 2),
        ("two", "2", 2),
        ("big", "300000", 262144),
        ("max", "262144", 262144),
        ("zero", "0", 0),
    ):
        strata(rootdir, "run", "--name", name, f"--cpu-shares={given}", "bb", "true")
        assert _host_config(rootdir, name)["CpuShares"] == effective, name


def test_cpu_shares_must_be_an_integer(rootdir):
    for bad in ("abc", "1.5", "99999999999999999999"):
        res = strata(rootdir, "run", f"--cpu-shares={bad}", "bb", "true", check=False)
        assert res.code == 125 and res.err.splitlines()[0].startswith(
            f'strata: invalid argument "{bad}" for "--cpu-shares" flag: '
        ), res.err
    _no_containers(rootdir)


# -- tracebacks become one line -------------------------------------------------------------------
def test_save_to_a_missing_directory_is_one_line(rootdir, tmp_path):
    res = strata(rootdir, "save", "-o", "/nonexistent/dir/x.tar", "bb", check=False)
    _one_line(res, 1, "/nonexistent/dir")
    (tmp_path / "out").mkdir()
    not_a_dir = tmp_path / "out" / "file"
    not_a_dir.write_text("")
    res = strata(rootdir, "save", "-o", str(not_a_dir / "x.tar"), "bb", check=False)
    _one_line(res, 1, str(not_a_dir))
    assert os.listdir(tmp_path / "out") == ["file"]


@needs_root
def test_kill_checks_the_signal_before_sending_it(rootdir):
    strata(rootdir, "run", "-d", "--name", "kk", "bb", "sleep", "300")
    for bad in ("99", "0", "65", "-1", "IGN", "_DFL", "SIG_IGN", "BOGUS", "RTMIN+99", "RTMAX-31", "1.5"):
        res = strata(rootdir, "kill", "-s", bad, "kk", check=False)
        _one_line(res, 125, f"Invalid signal: {bad}")
    for good in ("SIGRTMIN+3", "rtmax-2", "64", "USR1", "sigwinch"):
        assert strata(rootdir, "kill", "-s", good, "kk").out == "kk\n"  # PID 1 ignores what it has no handler for
    assert json.loads(strata(rootdir, "inspect", "kk").out)[0]["State"]["Running"]


@needs_root
def test_logs_tail_must_be_all_or_a_number(rootdir):
    strata(rootdir, "run", "--name", "ll", "bb", "sh", "-c", "echo one; echo two")
    res = strata(rootdir, "logs", "--tail", "abc", "ll", check=False)
    _one_line(res, 125, 'invalid value for --tail: "abc"')
    assert strata(rootdir, "logs", "--tail", "all", "ll").out == "one\ntwo\n"
    assert strata(rootdir, "logs", "-n", "1", "ll").out == "two\n"
    assert strata(rootdir, "logs", "-n", "0", "ll").out == ""
    assert strata(rootdir, "logs", "--tail=-1", "ll").out == "one\ntwo\n"  # Docker: negative is all


@needs_root
def test_export_to_a_missing_directory_is_one_line(rootdir):
    strata(rootdir, "run", "--name", "xx", "bb", "true")
    res = strata(rootdir, "export", "-o", "/nonexistent/dir/x.tar", "xx", check=False)
    _one_line(res, 125, "/nonexistent/dir")


def test_bad_environment_variables_are_refused(rootdir):
    for bad in ("=x", "="):
        res = strata(rootdir, "run", "--rm", "-e", bad, "bb", "true", check=False)
        _one_line(res, 125, f"invalid environment variable: {bad}")
    _no_containers(rootdir)


def test_environment_with_a_nul_is_refused(rootdir, capsys):
    # argv from a shell cannot hold a NUL: only a caller of main() can pass one (checked before the image)
    for bad in ("A=x\0y", "A\0B=y"):
        assert main(["--root", rootdir, "run", "--rm", "-e", bad, "no-such-image", "true"]) == 125
        err = capsys.readouterr().err
        shown = bad.replace("\0", "\\0")
        assert err.splitlines() == [f"Error: invalid environment variable: {shown}"], err
    _no_containers(rootdir)


def test_hostname_longer_than_the_kernel_takes_is_refused(rootdir):
    res = strata(rootdir, "run", "--hostname", "h" * 300, "bb", "true", check=False)
    _one_line(res, 125, f'invalid hostname "{"h" * 300}": longer than 64 characters')
    res = strata(rootdir, "run", "--hostname", "two\nlines", "bb", "true", check=False)
    _one_line(res, 125, 'invalid hostname "two\\nlines"')
    _no_containers(rootdir)


def test_container_name_longer_than_253_is_refused(rootdir):
    name = "n" * 300
    res = strata(rootdir, "run", "--name", name, "bb", "true", check=False)
    _one_line(res, 125, f"Invalid container name ({name})")
    assert "253" in res.err
    _no_containers(rootdir)


@needs_root
def test_container_name_of_253_is_fine(rootdir):
    name = "n" * 253
    strata(rootdir, "run", "--rm", "--name", name, "bb", "true")


# -- usage errors: 125, one line and a hint -----------------------------------------------------------
def test_bad_flag_value_is_a_usage_error(rootdir):
    res = strata(rootdir, "run", "--cpu-shares", "abc", "bb", check=False)
    _usage(res, 'strata: invalid argument "abc" for "--cpu-shares" flag: not an integer', "See 'strata run --help'.")
    res = strata(rootdir, "stop", "-t", "soon", "x", check=False)
    _usage(res, 'strata: invalid argument "soon" for "-t, --time" flag: not a number', "See 'strata stop --help'.")
    res = strata(rootdir, "ps", "--format", "{{.Nope}", check=False)  # a template, as Docker's --format
    assert (res.code, res.out) == (125, "") and res.err.startswith("Error: template parsing error: "), res
    _no_containers(rootdir)


def test_unknown_flag_is_a_usage_error(rootdir):
    _usage(
        strata(rootdir, "images", "--bogus", check=False),
        "strata: unknown flag: --bogus",
        "See 'strata images --help'.",
    )
    _usage(
        strata(rootdir, "run", "--bogus", "bb", "true", check=False),
        "strata: unknown flag: --bogus",
        "See 'strata run --help'.",
    )
    _usage(
        strata(rootdir, "system", "check", "--bogus", check=False),
        "strata: unknown flag: --bogus",
        "See 'strata system check --help'.",
    )
    _usage(
        strata(rootdir, "images", "app", "extra", check=False),
        "strata: 'strata images' got an unexpected argument: extra",
        "See 'strata images --help'.",
    )
    _no_containers(rootdir)


def test_missing_arguments_are_a_usage_error(rootdir):
    _usage(
        strata(rootdir, "save", check=False),
        "strata: 'strata save' is missing an argument: images",
        "See 'strata save --help'.",
    )
    _usage(
        strata(rootdir, "run", check=False),
        "strata: 'strata run' is missing an argument: image",
        "See 'strata run --help'.",
    )
    _usage(
        strata(rootdir, "tag", check=False),
        "strata: 'strata tag' is missing arguments: source, target",
        "See 'strata tag --help'.",
    )
    _usage(
        strata(rootdir, "ps", "--all=3", check=False),
        'strata: invalid argument "3" for "-a, --all" flag: takes no value',
        "See 'strata ps --help'.",
    )
    _usage(
        strata(rootdir, "kill", "-s", check=False),
        "strata: flag needs an argument: -s, --signal",
        "See 'strata kill --help'.",
    )


def test_unknown_verb_is_a_usage_error(rootdir):
    _usage(strata(rootdir, "bogus", check=False), "strata: 'bogus' is not a strata command.", "See 'strata --help'")
    _usage(
        strata(rootdir, "system", "bogus", check=False),
        "strata: 'bogus' is not a strata system command.",
        "See 'strata system --help'",
    )


def test_unknown_network_is_one_line(rootdir):
    res = strata(rootdir, "run", "--network", "bogus", "bb", "true", check=False)
    _one_line(res, 125, "network bogus not found")
    _no_containers(rootdir)


def test_help_still_works(rootdir):
    res = strata(rootdir, "--help", check=False)
    assert res.code == 0 and res.out.startswith("usage: strata") and res.err == ""
    res = strata(rootdir, "run", "--help", check=False)
    assert res.code == 0 and res.out.startswith("usage: strata run") and "--cpu-shares" in res.out
