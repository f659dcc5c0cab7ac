"""``--restart``: whether a container's supervisor starts it again when PID 1 ends, and after how
long, as Docker's restart manager decides (moby ``restartmanager``): ``always`` and
``unless-stopped`` whatever the exit code, ``on-failure[:N]`` for a non-zero one (at most N times),
never after ``stop``/``rm -f`` (``lifecycle`` marks those) nor for a start that failed. The delay
starts at 100 ms and doubles with each restart, up to a minute; it is back to 100 ms once the
container ran for 10 s.

*Caveats*: a policy is kept by the container's supervisor for as long as it lives: strata has no
daemon, so nothing starts containers again after a reboot of the host (``always`` and
``unless-stopped`` alike).
"""

from __future__ import annotations

from typing import Any

STOPPED = "stopped"  # in a container's dir: stopped by hand, not to be started again (``lifecycle`` makes it)
FIRST_DELAY = 0.1  # seconds
MAX_DELAY = 60.0
RESET_AFTER = 10.0  # seconds a container must run for the delay to start again from FIRST_DELAY


def wanted(policy: dict[str, Any] | None, code: int, restarts: int) -> bool:
    """Does ``policy`` (``HostConfig.RestartPolicy``) start a container that ended with ``code``
    again, when it has been started again ``restarts`` times already?"""
    name = (policy or {}).get("Name") or "no"
    if name in ("always", "unless-stopped"):
        return True
    if name == "on-failure" and code != 0:
        limit = int((policy or {}).get("MaximumRetryCount") or 0)
        return limit == 0 or restarts < limit
    return False


def next_delay(previous: float, ran_for: float) -> float:
    """The wait before the next start: double the last one (the first: ``FIRST_DELAY``), reset when
    the container ran long enough, capped."""
    if previous <= 0 or ran_for >= RESET_AFTER:
        return FIRST_DELAY
    return min(previous * 2, MAX_DELAY)
