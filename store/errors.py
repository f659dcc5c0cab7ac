"""Errors raised by the store.

    StoreError                  base: one line, says what failed and why
    ├── NotFound                no such image, tag, layer or blob
    ├── Conflict                the operation would break a reference (tag in use, image in use)
    ├── InvalidReference        a malformed image name, tag or id
    ├── BadInput                an archive, tar, blob or JSON that cannot be trusted
    │   ├── DigestMismatch      content does not hash to what it claims
    │   └── UnsafeTar           an entry would write outside its layer dir
    └── RegistryError           a registry cannot be reached or refused a request (its TLS, our
        │                       credentials, an HTTP status); says the host and why
        └── Interrupted         the connection dropped mid-transfer: what was verified is kept, and
                                running the command again resumes

The CLI prints ``str(err)`` and exits non-zero; nothing else in the store prints.
"""

from __future__ import annotations


class StoreError(Exception):
    """Base of every error the store raises on purpose."""


class NotFound(StoreError):
    pass


class Conflict(StoreError):
    pass


class InvalidReference(StoreError):
    pass


class BadInput(StoreError):
    pass


class DigestMismatch(BadInput):
    pass


class UnsafeTar(BadInput):
    pass


class RegistryError(StoreError):
    pass


class Interrupted(RegistryError):
    pass
