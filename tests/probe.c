/* The isolation tests' probe: tries each attack named on its command line from inside a container and
 * prints NAME=ok (it worked) or NAME=ERRNO (the kernel or the seccomp filter refused it). Built static
 * by tests/test_isolation.py, so that it runs in any image. */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static const char *name_of(int err) {
    switch (err) {
    case EPERM: return "EPERM";
    case EACCES: return "EACCES";
    case ENOSYS: return "ENOSYS";
    case EINVAL: return "EINVAL";
    default: return strerror(err);
    }
}

static void report(const char *what, long rc) {
    if (rc < 0)
        printf("%s=%s\n", what, name_of(errno));
    else
        printf("%s=ok\n", what);
}

static long ptrace_pid1(void) {
    if (ptrace(PTRACE_ATTACH, 1, 0, 0) < 0)
        return -1;
    waitpid(1, NULL, __WALL);
    return ptrace(PTRACE_DETACH, 1, 0, 0);
}

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        errno = 0;
        if (!strcmp(a, "keyctl")) /* KEYCTL_GET_KEYRING_ID of KEY_SPEC_SESSION_KEYRING */
            report(a, syscall(SYS_keyctl, 0, -3, 0));
        else if (!strcmp(a, "session-keyring")) {
            long id = syscall(SYS_keyctl, 0, -3, 0);
            if (id < 0)
                report(a, id);
            else
                printf("%s=%ld\n", a, id);
        } else if (!strcmp(a, "add_key"))
            report(a, syscall(SYS_add_key, "user", "probe", "x", 1, -3));
        else if (!strcmp(a, "unshare-user")) /* unshare -Urm: a namespace with every capability */
            report(a, unshare(CLONE_NEWUSER | CLONE_NEWNS));
        else if (!strcmp(a, "mount"))
            report(a, mount("none", "/mnt", "tmpfs", 0, NULL));
        else if (!strcmp(a, "bpf"))
            report(a, syscall(SYS_bpf, 0, NULL, 0));
        else if (!strcmp(a, "perf_event_open"))
            report(a, syscall(SYS_perf_event_open, NULL, 0, -1, -1, 0));
        else if (!strcmp(a, "open_by_handle_at"))
            report(a, syscall(SYS_open_by_handle_at, -1, NULL, 0));
        else if (!strcmp(a, "kexec_load"))
            report(a, syscall(SYS_kexec_load, 0, 0, NULL, 0));
        else if (!strcmp(a, "userfaultfd"))
            report(a, syscall(SYS_userfaultfd, 0));
        else if (!strcmp(a, "vsock")) /* AF_VSOCK */
            report(a, socket(40, SOCK_STREAM, 0));
        else if (!strcmp(a, "inet"))
            report(a, socket(AF_INET, SOCK_DGRAM, 0));
        else if (!strcmp(a, "clone-newuser")) { /* clone with a namespace flag */
            long pid = syscall(SYS_clone, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0);
            if (pid == 0)
                _exit(0);
            if (pid > 0)
                waitpid(pid, NULL, 0);
            report(a, pid);
        }
        else if (!strcmp(a, "ptrace-pid1"))
            report(a, ptrace_pid1());
        else if (!strcmp(a, "orphan")) { /* clear the parent-death signal, then wait to be killed */
            report(a, prctl(PR_SET_PDEATHSIG, 0, 0, 0, 0));
            fflush(stdout);
            pause();
        } else if (!strcmp(a, "mkdir"))
            report(a, mkdir("/probe-dir", 0755));
        else
            printf("%s=unknown\n", a);
    }
    return 0;
}
