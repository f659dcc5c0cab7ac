"""strata's runner: the ``strata`` CLI, and (as it grows) containers composed from ``store`` layer dirs
and a ``unionfs`` mount: records, the supervisor, namespaces, cgroups.

The CLI (``runner.cli``) is the only module that prints or chooses exit codes.
"""
