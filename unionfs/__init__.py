"""strata's union filesystem (pyfuse3 + trio): read-only lower layer dirs under one writable upper.

Not written yet: see docs/ARCHITECTURE.md. Shares only a spec with ``store``: OCI whiteouts.
"""
