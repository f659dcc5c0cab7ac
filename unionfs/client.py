"""``strata-unionfs``: ``python -m unionfs``'s command line, for callers that exec a mount program
once per mount (containers-storage's ``mount_program``). A mount is asked of the user's warm *mount
server* (``unionfs.server``), which forks a daemon that has everything imported already and answers
once the mount is ready; this process exits 0 then, or prints the error, as ``python -m unionfs``.

Only ``strata-unionfs -o OPTIONS [-o ...] MOUNTPOINT`` goes to a server. Anything else (``-u``,
``-f``, ``--help``, a usage error), ``STRATA_UNIONFS_NO_SERVER=1``, no private directory for the
socket, or a server that cannot serve this caller (it runs other code, or has lower limits) runs
here, as ``python -m unionfs`` would (a *cold* mount); where no server listened (or a stale one),
one is started in the background for the next mount, once this one is made.

One server per user and per namespace pair (user, mount): its socket is
``DIR/mount-<user ns>-<mount ns>.sock`` (the namespaces' inode numbers), DIR being
``$STRATA_UNIONFS_DIR``, else ``$XDG_RUNTIME_DIR/strata-unionfs``, else ``/run/strata-unionfs``
(root) or ``/tmp/strata-unionfs-UID``, made 0700 and checked to be ours: a mount is made in the
namespaces its caller is in, never in another's.

This module imports only C modules on the way to a server (``_socket``): it is started per mount,
and Python's own start-up is most of what such a mount costs. The request: a 4-byte length, then
NUL-separated fields (protocol, interpreter, mountpoint, the ``-o`` values), with the caller's
working directory as an fd (relative paths are the caller's; the server reads the rest it needs,
the caller's namespaces and open-file limit, from /proc). The answer, read to its end:
``stale`` (mount here, and start a new server), or ``+`` (taken) followed by the daemon's word, ``ok``
or why it could not mount (nothing: it died). No ``+``: the server went away first; mount here.
"""

from __future__ import annotations

import os
import sys

PROTOCOL = "strata-unionfs-2"


def server_dir() -> str:
    if os.environ.get("STRATA_UNIONFS_DIR"):
        return os.environ["STRATA_UNIONFS_DIR"]
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return os.path.join(runtime, "strata-unionfs")
    return "/run/strata-unionfs" if os.geteuid() == 0 else f"/tmp/strata-unionfs-{os.geteuid()}"


def namespaces() -> str:
    """This process's user and mount namespaces, as the socket's name spells them."""
    return f"{os.stat('/proc/self/ns/user').st_ino}-{os.stat('/proc/self/ns/mnt').st_ino}"


def socket_name(key: str) -> str:
    return f"mount-{key}.sock"


def private_dir(path: str, heal: bool = False) -> bool:
    """Make ``path`` (0700) if it is missing; true if it is a real directory owned by us that no one
    else may enter (a socket in it is then ours). ``heal``: one no one else could write to is closed
    to them (our default place only: a directory the user named is theirs to set)."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError:
        return False
    st = os.lstat(path)
    if (st.st_mode & 0o170000) != 0o040000 or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        return False
    if st.st_mode & 0o077:  # ours and no one else could add to it (made by a makedirs, say)
        if not heal:
            return False
        try:
            os.chmod(path, 0o700)
        except OSError:
            return False
    return True


def mount_request(argv: list[str]) -> tuple[list[str], str] | None:
    """(the ``-o`` values, the mountpoint) if ``argv`` only asks for a mount; None otherwise."""
    options: list[str] = []
    positional: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "-o" and i + 1 < len(argv):
            options.append(argv[i + 1])
            i += 2
        elif arg.startswith("-o") and len(arg) > 2:
            options.append(arg[2:])
            i += 1
        elif arg.startswith("-") or positional:
            return None
        else:
            positional.append(arg)
            i += 1
    return (options, positional[0]) if positional and options else None


def encode(options: list[str], mountpoint: str) -> bytes:
    fields = [PROTOCOL, sys.executable, mountpoint, *options]
    body = b"\0".join(os.fsencode(f) for f in fields)
    return len(body).to_bytes(4, "little") + body


def via_server(options: list[str], mountpoint: str) -> tuple[int | None, str | None]:
    """Ask the server for the mount: (the exit code, None), or (None, what to start) if it cannot
    (then mount here and, if that worked, start a server for the next mount: ``DIR KEY``)."""
    import _socket

    directory = server_dir()
    if not private_dir(directory, heal=not os.environ.get("STRATA_UNIONFS_DIR")):
        return None, None
    try:
        key = namespaces()
    except OSError:
        return None, None
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    try:
        sock.connect(os.path.join(directory, socket_name(key)))
    except OSError:
        sock.close()
        return None, f"{directory}\0{key}"
    answer = b""
    try:
        request = encode(options, mountpoint)
        cwd = os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            sent = sock.sendmsg([request], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, cwd.to_bytes(4, sys.byteorder))])
        finally:
            os.close(cwd)
        if sent < len(request):
            sock.sendall(request[sent:])
        while chunk := sock.recv(4096):
            answer += chunk
    except OSError:
        pass
    finally:
        sock.close()
    if not answer.startswith(b"+"):  # stale, or a server going away before it took the request
        return None, f"{directory}\0{key}" if answer == b"stale" else None
    message = answer[1:].decode(errors="replace")
    if message == "ok":
        return 0, None
    print(f"unionfs: {message or 'the daemon died before the mount was ready'}", file=sys.stderr)
    return 1, None


def start_server(directory: str, key: str) -> None:
    """Start a server in the background for the next mount (it exits if one listens already). Its
    stdio is /dev/null: a caller that waits for the end of this command's output (Go's exec, with
    stderr on a pipe) must not wait for the server's too."""
    import subprocess

    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.environ.get("PYTHONPATH")
    env = {**os.environ, "PYTHONPATH": package_parent + (os.pathsep + path if path else "")}
    try:
        subprocess.Popen(
            [sys.executable, "-m", "unionfs.server", directory, key],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            cwd="/",
            env=env,
        )
    except OSError:
        pass


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    request = mount_request(args)
    start = None
    if request is not None and os.environ.get("STRATA_UNIONFS_NO_SERVER") != "1":
        code, start = via_server(*request)
        if code is not None:
            sys.stderr.flush()
            os._exit(code)  # nothing of ours to clean up: skip the interpreter's shutdown
    from .mount import main as mount_here

    code = mount_here(args, prog="strata-unionfs")
    if code == 0 and start is not None:  # a server for the next mount (none is left by a failed one)
        start_server(*start.split("\0"))
    return code


if __name__ == "__main__":
    sys.exit(main())
