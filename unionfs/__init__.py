"""strata's union filesystem (pyfuse3 + trio): read-only *lower* layer dirs under one writable *upper*,
seen through a *merged* *mountpoint*.

Lookup goes upper, then lowers in order; a *whiteout* (``.wh.NAME``) hides a name below it and an
*opaque* directory (``.wh..wh..opq``) hides everything below it. The upper is written in that OCI
spelling only, so it tars straight into a layer. Shares only that spec with ``store``.

Modules: ``whiteout`` (the spellings), ``layers`` (the layer dirs and name resolution, no FUSE),
``copyup`` (copying into the upper through the workdir, and scheduling copy-ups), ``copydata`` (how
bytes and xattrs are copied), ``journal`` (copy-ups
a power cut could lose: notes, sync, recovery), ``inodes`` (our inode numbers), ``attrs`` (what the
kernel is told of an object), ``fdcache`` (backing fds), ``listing`` (readdir's listings), ``upper``
(markers and owners in the upper), ``fs`` (the pyfuse3 Operations), ``options`` (``-o``'s parsing),
``mount`` (``python -m unionfs`` and the ``Mount`` API), ``client`` (``strata-unionfs``, the mount
program) and ``server`` (its warm mount server), ``mountinfo`` (finding mounts), ``errors``.
"""
