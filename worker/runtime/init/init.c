/*
 * nubo sandbox init: PID 1 of every sandbox.
 *
 * The runtime (python3 with our bootstrap, or a `provided` bootstrap) runs
 * as this process's child. In a PID namespace every orphan is reparented to
 * PID 1, and a runtime that is PID 1 itself never waits for processes it
 * did not start, so the zombies of a handler's background processes would
 * pile up in a warm sandbox until its pids limit. This init reaps them,
 * forwards every catchable signal to the runtime, and exits with the
 * runtime's status (128 + signal when a signal ended it, as a shell
 * reports it), which the worker reads as the sandbox's exit.
 *
 * Usage: init PROGRAM [ARGS...]
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static int status_of(int st) {
    if (WIFEXITED(st)) {
        return WEXITSTATUS(st);
    }
    if (WIFSIGNALED(st)) {
        return 128 + WTERMSIG(st);
    }
    return 255;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "nubo-init: usage: init PROGRAM [ARGS...]\n");
        return 127;
    }
    /* Every signal waits in the mask: taken one at a time below, none lost
     * between the fork and the wait loop. */
    sigset_t all, before;
    sigfillset(&all);
    if (sigprocmask(SIG_BLOCK, &all, &before) != 0) {
        perror("nubo-init: sigprocmask");
        return 127;
    }
    pid_t runtime = fork();
    if (runtime < 0) {
        perror("nubo-init: fork");
        return 127;
    }
    if (runtime == 0) {
        sigprocmask(SIG_SETMASK, &before, NULL);
        execv(argv[1], argv + 1);
        fprintf(stderr, "nubo-init: cannot run %s: %s\n", argv[1], strerror(errno));
        _exit(127);
    }
    for (;;) {
        siginfo_t info;
        int sig = sigwaitinfo(&all, &info);
        if (sig < 0) {
            if (errno == EINTR) {
                continue;
            }
            perror("nubo-init: sigwaitinfo");
            return 127;
        }
        if (sig != SIGCHLD) {
            kill(runtime, sig);
            continue;
        }
        /* SIGCHLD merges: reap everything that has exited. */
        for (;;) {
            int st;
            pid_t p = waitpid(-1, &st, WNOHANG);
            if (p <= 0) {
                break;
            }
            if (p == runtime) {
                /* Leaving takes the rest of the namespace with us. */
                return status_of(st);
            }
        }
    }
}
