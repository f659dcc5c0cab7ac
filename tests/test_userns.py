"""A rootless container's user namespace maps (runner.userns): the user's ranges where the
distribution's helpers and /etc/subuid, /etc/subgid give them, else one id and a warning that
says why. (Run for real as a throwaway user: tests/test_rootless.py, tests/test_rootless_owners.py.)"""

from __future__ import annotations

import os

from runner import userns

USER = 4242


def test_without_newuidmap_the_warning_names_the_package(monkeypatch):
    """No newuidmap/newgidmap (the uidmap package missing): one id, and run's warning says which
    package to install (with it, and a range, there is no warning; without a range, that is said)."""
    monkeypatch.setattr(userns, "helpers", lambda: None)
    assert userns.single_reason(os.getuid()) == "newuidmap and newgidmap are not installed (Debian's package uidmap)"
    assert userns.mappings(USER, USER) == (
        [{"containerID": 0, "hostID": USER, "size": 1}],
        [{"containerID": 0, "hostID": USER, "size": 1}],
    )
    monkeypatch.setattr(userns, "helpers", lambda: ("/usr/bin/newuidmap", "/usr/bin/newgidmap"))
    monkeypatch.setattr(userns, "subid_range", lambda path, uid: (100000, 65536))
    assert userns.single_reason(USER) is None
    assert userns.mappings(USER, USER)[0][1] == {"containerID": 1, "hostID": 100000, "size": 65536}
