"""``strata build``: images from a Dockerfile, layer by layer, with a cache (Docker's classic
builder's semantics and history, BuildKit's parser and progress).

    parser        Dockerfile text -> nodes (directives, continuations, heredocs, flags)
    instructions  nodes -> stages of checked instructions
    words         $VAR expansion and word splitting, as BuildKit's shell lexer
    dockerignore  .dockerignore patterns, Docker's rules
    plan          the stages the target needs and each step, expanded, before anything runs
    context       the build context (a directory, or a tar on stdin) and its Dockerfile
    trees         the trees COPY reads (context, images), symlinks in scope, globs, checksums
    copying       COPY/ADD/WORKDIR written into a step's upper dir, no container
    copystep      COPY/ADD sources, their checksum (cache key) and the copy
    runstep       RUN: a container through the supervisor, its upper committed
    cache         the cache: images found by parent and probe
    history       Docker's created_by strings and Go's formatting
    progress      BuildKit's plain and tty progress
    executor      the build itself

Vocabulary: a *step* is one instruction's image; its *probe* is the run config with ``Cmd`` the
step's probe command, kept as ``container_config``: the cache key with the parent image's id.
"""

from .errors import BuildError
from .executor import Request, build
from .plan import Options
from .progress import Progress

__all__ = ["BuildError", "Options", "Progress", "Request", "build"]
