"""strata's image store: content-addressed blobs, extracted layer dirs, images, tags and archives.

Vocabulary (shared with ``unionfs`` and ``runner``):
  *layer blob*  a layer's tar as stored or shipped, maybe compressed; named by its *digest*.
  *diff_id*     the digest of a layer's uncompressed tar.
  *chain id*    a layer together with the layers below it (OCI config.md); names a *layer dir*.
  *layer dir*   ``layers/<chain>/diff``: the layer's files as its tar says, *whiteouts* (``.wh.NAME``)
                and *opaque* markers (``.wh..wh..opq``) included: a *lower* dir for the union mount.
  *image*       a config blob (its digest is the image id) naming its layers by diff_id.

``store`` imports nothing from ``unionfs`` or ``runner``.
"""

from .errors import BadInput, Conflict, DigestMismatch, InvalidReference, NotFound, StoreError, UnsafeTar
from .store import Store
from .views import HistoryRow, TreeNode

__all__ = [
    "BadInput",
    "Conflict",
    "DigestMismatch",
    "HistoryRow",
    "InvalidReference",
    "NotFound",
    "Store",
    "StoreError",
    "TreeNode",
    "UnsafeTar",
]
