"""Progress on a terminal: one line per layer, redrawn in place at most ~10 times a second, ending with
each layer's final line; nothing at all when stderr is not a terminal."""

from __future__ import annotations

import os
import re
import select
import subprocess
import time

import pytest
from helpers import REPO, STRATA, docker_v12_save, sha256, strata, tar_bytes

from runner.cli.progress import Bars


def screen(stream: str) -> list[str]:
    """What a terminal shows after ``stream``: just the moves the bars use (CPL, EL, CR, LF)."""
    lines, row, col = [""], 0, 0
    for token in re.findall(r"\x1b\[(\d*)([FK])|(\r)|(\n)|([^\x1b\r\n]+)", stream):
        count, move, cr, lf, text = token
        if move == "F":
            row, col = max(0, row - int(count or 1)), 0
        elif move == "K":
            lines[row] = lines[row][:col]
        elif cr:
            col = 0
        elif lf:
            row, col = row + 1, 0
            if row == len(lines):
                lines.append("")
        else:
            line = lines[row]
            lines[row] = line[:col] + text + line[col + len(text) :]
            col += len(text)
    return [line for line in lines if line]


def _load_on_a_terminal(root: str, archive: str) -> tuple[int, str, float]:
    master, slave = os.openpty()
    start = time.monotonic()
    proc = subprocess.Popen(
        [*STRATA, "--root", root, "load", "-i", archive],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=slave,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": REPO},
    )
    os.close(slave)
    out = b""
    try:
        while select.select([master], [], [], 120)[0]:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: strata is gone
                break
            if not chunk:
                break
            out += chunk
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    return code, out.decode(), time.monotonic() - start


def test_bars_redraw_at_most_ten_times_a_second_and_end_clean(io_stream=None):
    import io

    stream = io.StringIO()
    bars = Bars(stream, "Loading layer", "Loaded")
    start = time.monotonic()
    for i in range(200_000):  # as fast as a loader calls back: far more often than anyone can read
        bars("aaaaaaaaaaaa" if i < 100_000 else "bbbbbbbbbbbb", (i % 100_000) * 10, 1_000_000)
    bars.finish()
    elapsed = time.monotonic() - start
    assert bars.redraws <= elapsed / 0.1 + 2
    assert screen(stream.getvalue()) == ["aaaaaaaaaaaa: Loaded 1MB", "bbbbbbbbbbbb: Loaded 1MB"]


def test_load_draws_one_line_per_layer_on_a_terminal(root, tmp_path):
    layers = [tar_bytes([{"name": f"big{i}", "data": os.urandom(6 << 20)}]) for i in range(3)]
    archive = tmp_path / "three.tar"
    archive.write_bytes(docker_v12_save(layers, ["three:1"]))
    code, out, elapsed = _load_on_a_terminal(root, str(archive))
    assert code == 0, out
    redraws = len(re.findall(r"\x1b\[\d+F", out)) + 1
    assert redraws <= elapsed / 0.1 + 2, (redraws, elapsed)
    final = screen(out)
    assert final == [f"{sha256(layer)[7:19]}: Loaded 6.3MB" for layer in layers], final
    assert len(out) < 20_000  # not a redraw per chunk read


def test_no_progress_off_a_terminal(root, tmp_path, busybox_rootfs):
    res = strata(root, "import", busybox_rootfs, "quiet:1")
    assert res.err == ""
    archive = tmp_path / "a.tar"
    archive.write_bytes(docker_v12_save([tar_bytes([{"name": "f", "data": b"x"}])], ["a:1"]))
    res = strata(root, "load", "-i", str(archive))
    assert res.err == "" and res.out == "Loaded image: a:1\n"


@pytest.mark.parametrize("failing", [True])
def test_a_failed_load_leaves_its_lines_where_they_stopped(root, tmp_path, failing):
    layer = tar_bytes([{"name": "f", "data": b"x" * 100_000}])
    archive = tmp_path / "bad.tar"
    data = docker_v12_save([layer], ["bad:1"])
    archive.write_bytes(data.replace(b"x" * 1000, b"y" * 1000, 1))  # the layer no longer matches its diff_id
    code, out, _ = _load_on_a_terminal(root, str(archive))
    assert code == 1
    final = screen(out)
    assert not any("Loaded" in line for line in final), final
    assert final[-1].startswith("Error:"), final
