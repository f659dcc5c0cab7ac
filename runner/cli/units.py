"""Resource flags as the kernel will hold them: ``-m`` sizes and ``--cpu-shares``.

Docker's grammar for the input (go-units RAMInBytes), the daemon's adjustments for the output: what is
stored in a container's config, and shown by ``strata inspect``, is the limit in force, not the text
typed. Nothing here touches a cgroup.
"""

from __future__ import annotations

import os
import re
from fractions import Fraction

from .errors import UsageError
from .format import quoted

MIN_MEMORY = 6 * 1024 * 1024  # Docker: "Minimum memory limit allowed is 6MB"
MAX_MEMORY = 2**63 - 1  # the kernel's counters and Docker's HostConfig.Memory are int64
MIN_CPU_SHARES, MAX_CPU_SHARES = 2, 262144  # the kernel's MIN_SHARES and MAX_SHARES (v1 cpu.shares)

# go-units: ^(\d+(\.\d+)*) ?([kKmMgGtTpP])?[iI]?[bB]?$, binary units whatever the spelling
_RAM = re.compile(r"(\d+(?:\.\d+)*) ?([kmgtp])?i?b?", re.IGNORECASE | re.ASCII)
_UNIT = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40, "p": 2**50}
# A multiplier is at most 2**50, and n / 2**50 has at most 50 decimals: digits past the 60th cannot
# change the floor of the product (and Python refuses int() of a string over 4300 digits).
_FRACTION_DIGITS = 60


def ram_in_bytes(value: str) -> int:
    """Docker's ``RAMInBytes``, exactly (no float): ``64m``, ``1.5GiB``, ``512 k``, ``1048576``;
    the fraction of a byte is dropped. Unbounded: see ``parse_memory`` for what may be in force."""
    m = _RAM.fullmatch(value)
    if m is None or m.group(1).count(".") > 1:  # "1.2.3" matches the grammar; ParseFloat refuses it
        raise UsageError(f"invalid memory value {quoted(value)}: use a number and an optional unit (b, k, m, g, t, p)")
    whole, _, decimals = m.group(1).partition(".")
    whole = whole.lstrip("0") or "0"
    multiplier = _UNIT[(m.group(2) or "").lower()]
    if len(whole) > 20:  # above 10**20 bytes, whatever the unit: more than any limit, and no int() of it
        return 10**20 * multiplier
    decimals = decimals[:_FRACTION_DIGITS]
    number = int(whole) + Fraction(int(decimals or "0"), 10 ** len(decimals))
    return int(number * multiplier)  # int() of a non-negative Fraction is its floor


def parse_memory(value: str) -> int:
    """``-m``: the limit the memory cgroup will enforce, in bytes (0: none, as Docker). The kernel
    keeps it in pages and rounds a written limit down to one (``page_counter_memparse``), so this
    does too; above the largest int64 or below 6 MB is refused."""
    size = ram_in_bytes(value)
    if size > MAX_MEMORY:
        raise UsageError(f"invalid memory value {quoted(value)}: larger than the largest limit ({MAX_MEMORY} bytes)")
    if size == 0:
        return 0
    if size < MIN_MEMORY:
        raise UsageError("Minimum memory limit allowed is 6MB")
    page = os.sysconf("SC_PAGE_SIZE")
    return size // page * page


def memory_swap(memory: int) -> int:
    """Docker's default memory + swap for ``-m`` alone: twice the limit; the kernel caps a larger
    write at its largest counter (in whole pages), so the stored value does too."""
    page = os.sysconf("SC_PAGE_SIZE")
    return min(2 * memory, MAX_MEMORY // page * page)


def effective_cpu_shares(shares: int) -> int:
    """``--cpu-shares`` as in force: 0 is the default weight (stored as 0), anything else is
    clamped to the kernel's [2, 262144] as Docker's daemon does."""
    if shares == 0:
        return 0
    return max(MIN_CPU_SHARES, min(MAX_CPU_SHARES, shares))
