"""Which process a pid names: /proc/PID/stat read for liveness and start time, so that a pid
recorded earlier is never taken for the process that reused it. A leaf module (no store, no trio):
``strata-oci`` imports it without the rest of strata."""

from __future__ import annotations


def _stat_fields(pid: int) -> list[str] | None:
    """Fields 3… of /proc/PID/stat (after the command name), or None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def process_alive(pid: int, start: str | None) -> bool:
    """Is ``pid`` alive (not a zombie) and, given ``start``, the same process (its start time, field 22
    of /proc/PID/stat, matches)?"""
    fields = _stat_fields(pid) if pid else None
    return fields is not None and fields[0] != "Z" and (start is None or fields[19] == start)


def start_time(pid: int) -> str | None:
    """Field 22 of /proc/PID/stat: with the pid, names one process for good."""
    fields = _stat_fields(pid)
    return fields[19] if fields else None
