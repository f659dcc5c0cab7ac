"""The runtime core, shaped like the OCI runtime-spec: a container is a bundle, a ``config.json`` that
says what to run and how to fence it, and everything that starts a container reads that.

    spec.py     config.json: the bundle ``strata run`` writes for a container (image config + flags,
                with Docker's defaults), and the checks every config passes before anything runs
    rootfs.py   the container's root from the config's mounts, devices, masked and read-only paths,
                every path resolved inside the root (openat2 RESOLVE_IN_ROOT), then pivot_root
    runtime.py  ``strata-oci``'s lifecycle over a state dir (create/start/state/kill/delete/exec)
    cli.py      ``strata-oci``: runc's command line (``python -m runner.oci``)

``runner.init`` runs a config (namespaces, PID 1, user, capabilities, seccomp, exec); the supervisor
adds what only strata does (the union mount, logs, state, exit codes).
"""
