"""Finding mounts in /proc/self/mountinfo, which spells space, tab, newline and backslash in a path in
octal. No FUSE here: the runner asks it without loading trio and pyfuse3."""

from __future__ import annotations


def spelled(path: str) -> str:
    """``path`` as mountinfo writes it."""
    return "".join(f"\\{ord(c):03o}" if c in " \t\n\\" else c for c in path)


def sources_at(path: str) -> list[str]:
    """The source ("device") field of each mount at ``path`` (as ``mounts_at``), oldest first."""
    target = spelled(path)
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields, _, rest = line.partition(" - ")
            if fields.split()[4] == target:
                found.append(rest.split()[1])
    return found


def mounts_at(path: str) -> list[tuple[str, str]]:
    """(MAJ:MIN, filesystem type) of each mount at ``path`` (absolute, symlinks resolved), oldest first."""
    target = spelled(path)
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields, _, rest = line.partition(" - ")
            parts = fields.split()
            if parts[4] == target:
                found.append((parts[2], rest.split(maxsplit=1)[0]))
    return found
