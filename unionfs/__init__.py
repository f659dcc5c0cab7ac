"""strata's union filesystem (pyfuse3 + trio): read-only *lower* layer dirs under one writable *upper*,
seen through a *merged* *mountpoint*.

Lookup goes upper, then lowers in order; a *whiteout* (``.wh.NAME``) hides a name below it and an
*opaque* directory (``.wh..wh..opq``) hides everything below it. The upper is written in that OCI
spelling only, so it tars straight into a layer. Shares only that spec with ``store``.

Built so far: ``whiteout`` (the spellings) and ``resolve`` (lookup and merged listings on directory
fds, no FUSE). The Operations, copy-up, the inode table and ``python -m unionfs`` come next.
"""
