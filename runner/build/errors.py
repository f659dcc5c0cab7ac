"""The build's one error.

    RunnerError (runner.errors)
    └── BuildError      what stopped the build, on one line, naming the Dockerfile line it came from
                        (``Dockerfile:7: unknown instruction: FOO``); lower errors (the store's, the
                        runner's, an OSError while copying) are turned into one where the step runs

Nothing in this package prints but ``progress``; the CLI prints ``str(err)`` and exits 1, as
``docker build`` does.
"""

from __future__ import annotations

from ..errors import RunnerError


class BuildError(RunnerError):
    pass
