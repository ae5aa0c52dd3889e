/*
 * job_exec.c: the "exec" handler: run a command for a job.
 *
 * A job's target names the command: {"argv": ["/opt/jobs/resize", "--fast"],
 * "env": {"SIZE": "small"}, "permanent_exit_codes": [65]}. The payload goes to
 * the command's stdin; BACKBONE_JOB_ID, BACKBONE_JOB_ATTEMPT,
 * BACKBONE_JOB_MAX_ATTEMPTS, BACKBONE_JOB_QUEUE and BACKBONE_JOB_TIMEOUT_MS
 * are in its environment, with PATH and LANG and the target's env, nothing
 * else of the server's (which holds its secrets). Exit 0: done; an exit code
 * listed in permanent_exit_codes: failed for good; anything else: retried.
 * At the attempt's timeout (or when the worker stops) its process group gets
 * SIGTERM, then SIGKILL 300 ms later, and the attempt is retried.
 *
 * Running commands on behalf of HTTP clients is only safe when the operator
 * chooses which: exec is off unless --exec-allow names directories, and a
 * command must live in one of them (checked at submit, and again before each
 * run after resolving symbolic links, since the worker may be another
 * process with another list).
 */
#include "jobs/jobs_int.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdlib.h>
#include <string.h>
#include <sys/pidfd.h>
#include <sys/wait.h>
#include <unistd.h>

enum {
    ARGV_MAX = 64,
    ENV_MAX = 64,
    STRING_MAX = 4096,
    EXIT_CODES_MAX = 32,
    OUTPUT_TAIL_BYTES = 1024, /* of stdout+stderr, kept for the error */
    /* SIGTERM, then SIGKILL this much later: well inside the second a lease
     * outlasts max_duration, so the attempt is recorded as a timeout before
     * the lease could be rescued. */
    KILL_GRACE_MS = 300,
};

struct jobs__exec {
    char **dirs; /* resolved (realpath), without a trailing slash */
    size_t n;
};

static const char *const TARGET_FIELDS[] = {"argv", "env", "permanent_exit_codes", NULL};
static const char *const RESERVED_ENV[] = {
    "PATH",
    "LANG",
    "BACKBONE_JOB_ID",
    "BACKBONE_JOB_ATTEMPT",
    "BACKBONE_JOB_MAX_ATTEMPTS",
    "BACKBONE_JOB_QUEUE",
    "BACKBONE_JOB_TIMEOUT_MS",
    "TRACEPARENT",
    NULL,
};

void
jobs__exec_destroy(struct jobs__exec *x)
{
    if (x == NULL)
        return;
    for (size_t i = 0; i < x->n; i++)
        free(x->dirs[i]);
    free(x->dirs);
    free(x);
}

enum err
jobs__exec_create(const char *const *dirs, struct jobs__exec **out, struct bb_error *e)
{
    struct jobs__exec *x = xcalloc(1, sizeof *x);
    size_t n = 0;
    while (dirs[n])
        n++;
    x->dirs = xcalloc(n ? n : 1, sizeof *x->dirs);
    for (size_t i = 0; i < n; i++) {
        char resolved[PATH_MAX];
        if (dirs[i][0] != '/' || realpath(dirs[i], resolved) == NULL) {
            bb_fail(e, ERR_USAGE, "exec-allow",
                    "--exec-allow: '%s' is not an existing absolute "
                    "directory",
                    dirs[i]);
            jobs__exec_destroy(x);
            return ERR_USAGE;
        }
        size_t len = strlen(resolved);
        if (len > 1 && resolved[len - 1] == '/')
            resolved[len - 1] = '\0';
        x->dirs[x->n++] = xstrdup(resolved);
    }
    *out = x;
    return ERR_OK;
}

/* Is `path` inside one of the allowed directories? */
static bool
exec_path_is_allowed(const struct jobs__exec *x, const char *path)
{
    for (size_t i = 0; i < x->n; i++) {
        size_t len = strlen(x->dirs[i]);
        if (strcmp(x->dirs[i], "/") == 0)
            return true;
        if (strncmp(path, x->dirs[i], len) == 0 && path[len] == '/')
            return true;
    }
    return false;
}

/* An absolute path without empty, "." or ".." segments. */
static bool
exec_path_is_plain(const char *path)
{
    if (path[0] != '/')
        return false;
    for (const char *seg = path + 1;; seg++) {
        const char *end = strchr(seg, '/');
        size_t len = end ? (size_t)(end - seg) : strlen(seg);
        if (len == 0 || (len == 1 && seg[0] == '.') || (len == 2 && seg[0] == '.' && seg[1] == '.'))
            return false;
        if (end == NULL)
            return true;
        seg = end;
    }
}

static bool
exec_env_name_is_valid(const char *name)
{
    if (!((*name >= 'A' && *name <= 'Z') || (*name >= 'a' && *name <= 'z') || *name == '_'))
        return false;
    for (const char *p = name; *p; p++) {
        if (!((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') ||
              *p == '_'))
            return false;
    }
    for (const char *const *r = RESERVED_ENV; *r; r++) {
        if (strcmp(*r, name) == 0)
            return false;
    }
    return strlen(name) <= 128;
}

/* A string of 1..STRING_MAX bytes without NUL. */
static bool
exec_string_is_valid(const json_t *v)
{
    return json_is_string(v) && json_string_length(v) > 0 && json_string_length(v) <= STRING_MAX &&
           memchr(json_string_value(v), '\0', json_string_length(v)) == NULL;
}

enum err
jobs__exec_check_target(const struct jobs__exec *x, const json_t *target, struct bb_error *e)
{
    if (!json_is_object(target))
        return bb_fail(e, ERR_INVALID, "target", "the exec handler needs target.argv");
    const char *key;
    const json_t *v;
    json_object_foreach((json_t *)target, key, v)
    {
        bool known = false;
        for (const char *const *f = TARGET_FIELDS; *f; f++)
            known = known || strcmp(*f, key) == 0;
        if (!known)
            return bb_fail(e, ERR_INVALID, "target", "unknown field 'target.%.64s'", key);
    }
    const json_t *argv = json_object_get(target, "argv");
    if (!json_is_array(argv) || json_array_size(argv) == 0 || json_array_size(argv) > ARGV_MAX)
        return bb_fail(e, ERR_INVALID, "target.argv",
                       "target.argv must be an array of 1 to %d strings", ARGV_MAX);
    for (size_t i = 0; i < json_array_size(argv); i++) {
        if (!exec_string_is_valid(json_array_get(argv, i)))
            return bb_fail(e, ERR_INVALID, "target.argv",
                           "target.argv[%zu] must be a string of 1 to %d bytes", i, STRING_MAX);
    }
    const char *path = json_string_value(json_array_get(argv, 0));
    if (!exec_path_is_plain(path))
        return bb_fail(e, ERR_INVALID, "target.argv",
                       "target.argv[0] must be an absolute path without '.' or '..' segments");
    if (!exec_path_is_allowed(x, path))
        return bb_fail(e, ERR_INVALID, "target.argv",
                       "target.argv[0] '%.200s' is outside the directories --exec-allow names",
                       path);
    const json_t *env = json_object_get(target, "env");
    if (env != NULL && (!json_is_object(env) || json_object_size(env) > ENV_MAX))
        return bb_fail(e, ERR_INVALID, "target.env",
                       "target.env must be an object of at most %d strings", ENV_MAX);
    json_object_foreach((json_t *)env, key, v)
    {
        if (!exec_env_name_is_valid(key))
            return bb_fail(e, ERR_INVALID, "target.env",
                           "target.env: '%.64s' is not a variable name a job may set", key);
        if (!exec_string_is_valid(v))
            return bb_fail(e, ERR_INVALID, "target.env",
                           "target.env.%.64s must be a string of 1 to %d bytes", key, STRING_MAX);
    }
    const json_t *codes = json_object_get(target, "permanent_exit_codes");
    if (codes != NULL && (!json_is_array(codes) || json_array_size(codes) > EXIT_CODES_MAX))
        return bb_fail(e, ERR_INVALID, "target.permanent_exit_codes",
                       "target.permanent_exit_codes must be an array of at most %d exit codes",
                       EXIT_CODES_MAX);
    for (size_t i = 0; i < json_array_size(codes); i++) {
        const json_t *c = json_array_get(codes, i);
        if (!json_is_integer(c) || json_integer_value(c) < 1 || json_integer_value(c) > 255)
            return bb_fail(e, ERR_INVALID, "target.permanent_exit_codes",
                           "target.permanent_exit_codes[%zu] must be an integer from 1 to 255", i);
    }
    return ERR_OK;
}

/* ---- running ------------------------------------------------------------------------------ */

/* The command's argv and environment, heap copies (exec_args_deinit). */
struct exec_args {
    char *argv[ARGV_MAX + 1];
    char *envp[ENV_MAX + 8];
    size_t n_env;
};

static void
exec_args_deinit(struct exec_args *a)
{
    for (size_t i = 0; a->argv[i]; i++)
        free(a->argv[i]);
    for (size_t i = 0; i < a->n_env; i++)
        free(a->envp[i]);
}

static void
exec_env_add(struct exec_args *a, const char *name, const char *value)
{
    BB_ASSERT(a->n_env + 1 < BB_ARRAY_LEN(a->envp));
    struct bb_buf b;
    bb_buf_init(&b);
    bb_buf_printf(&b, "%s=%s", name, value);
    a->envp[a->n_env++] = b.data; /* the buffer's storage, now owned by envp */
}

static void
exec_args_init(struct exec_args *a, const json_t *target, const struct job_run *run)
{
    memset(a, 0, sizeof *a);
    const json_t *argv = json_object_get(target, "argv");
    for (size_t i = 0; i < json_array_size(argv); i++)
        a->argv[i] = xstrdup(json_string_value(json_array_get(argv, i)));
    char num[32];
    exec_env_add(a, "PATH", "/usr/local/bin:/usr/bin:/bin");
    exec_env_add(a, "LANG", "C.UTF-8");
    snprintf(num, sizeof num, "%" PRId64, run->job->id);
    exec_env_add(a, "BACKBONE_JOB_ID", num);
    snprintf(num, sizeof num, "%" PRId64, run->job->attempt);
    exec_env_add(a, "BACKBONE_JOB_ATTEMPT", num);
    snprintf(num, sizeof num, "%" PRId64, run->job->attempt_limit);
    exec_env_add(a, "BACKBONE_JOB_MAX_ATTEMPTS", num);
    exec_env_add(a, "BACKBONE_JOB_QUEUE", run->job->queue);
    int64_t left = run->deadline_mono_ms - bb_mono_ms();
    snprintf(num, sizeof num, "%" PRId64, left > 0 ? left : 0);
    exec_env_add(a, "BACKBONE_JOB_TIMEOUT_MS", num);
    if (run->job->traceparent)
        exec_env_add(a, "TRACEPARENT", run->job->traceparent);
    const char *key;
    const json_t *v;
    json_object_foreach((json_t *)json_object_get(target, "env"), key, v)
        exec_env_add(a, key, json_string_value(v));
}

/* Keep the last OUTPUT_TAIL_BYTES of the command's output. */
static void
exec_output_keep(struct bb_buf *tail, const char *data, size_t n)
{
    bb_buf_append(tail, data, n);
    if (tail->len > 2 * (size_t)OUTPUT_TAIL_BYTES) {
        size_t drop = tail->len - OUTPUT_TAIL_BYTES;
        memmove(tail->data, tail->data + drop, tail->len - drop + 1);
        tail->len -= drop;
    }
}

/* Start the command with stdin and stdout+stderr on pipes, in its own
 * process group, with default signal handling and no other descriptors. */
static int
exec_spawn(const char *path, struct exec_args *a, int *in_fd, int *out_fd, pid_t *pid)
{
    int in[2], out[2];
    if (pipe2(in, O_CLOEXEC) != 0)
        return errno;
    if (pipe2(out, O_CLOEXEC) != 0) {
        int err = errno;
        close(in[0]);
        close(in[1]);
        return err;
    }
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t attr;
    sigset_t none, all;
    sigemptyset(&none);
    sigfillset(&all);
    int rc = posix_spawn_file_actions_init(&fa);
    if (rc == 0 && (rc = posix_spawnattr_init(&attr)) != 0)
        posix_spawn_file_actions_destroy(&fa);
    if (rc != 0)
        goto fail;
    if ((rc = posix_spawn_file_actions_adddup2(&fa, in[0], 0)) == 0 &&
        (rc = posix_spawn_file_actions_adddup2(&fa, out[1], 1)) == 0 &&
        (rc = posix_spawn_file_actions_adddup2(&fa, out[1], 2)) == 0 &&
        (rc = posix_spawn_file_actions_addclosefrom_np(&fa, 3)) == 0 &&
        (rc = posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK |
                                                  POSIX_SPAWN_SETSIGDEF)) == 0 &&
        (rc = posix_spawnattr_setpgroup(&attr, 0)) == 0 &&
        (rc = posix_spawnattr_setsigmask(&attr, &none)) == 0 &&
        (rc = posix_spawnattr_setsigdefault(&attr, &all)) == 0)
        rc = posix_spawn(pid, path, &fa, &attr, a->argv, a->envp);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&attr);
fail:
    close(in[0]);
    close(out[1]);
    if (rc != 0) {
        close(in[1]);
        close(out[0]);
        return rc;
    }
    fcntl(in[1], F_SETFL, O_NONBLOCK);
    fcntl(out[0], F_SETFL, O_NONBLOCK);
    *in_fd = in[1];
    *out_fd = out[0];
    return 0;
}

/* What became of a command. */
struct exec_result {
    int status;         /* from waitpid */
    bool stopped;       /* we signalled it: timeout or worker stop */
    struct bb_buf tail; /* end of its output */
};

/* Read what the command wrote so far; close the pipe (-1) at its end. */
static void
exec_drain(int *fd, struct bb_buf *tail)
{
    char chunk[4096];
    ssize_t got;
    while ((got = read(*fd, chunk, sizeof chunk)) > 0)
        exec_output_keep(tail, chunk, (size_t)got);
    if (got == 0 || (got < 0 && errno != EAGAIN && errno != EINTR)) {
        close(*fd);
        *fd = -1;
    }
}

/*
 * Feed the payload, collect the output's tail and wait for the process,
 * signalling its group when the run must stop. Waits on a pidfd, so the
 * process's exit wakes the loop with no polling.
 */
static void
exec_supervise(struct job_run *run, pid_t pid, int in_fd, int out_fd, struct exec_result *res)
{
    int pidfd = pidfd_open(pid, 0);
    const char *payload = run->job->payload;
    size_t left = strlen(payload);
    int64_t kill_at_ms = 0;
    bool exited = false;
    while (!exited) {
        if (!res->stopped && job_run_should_stop(run)) {
            res->stopped = true;
            kill(-pid, SIGTERM);
            kill_at_ms = bb_mono_ms() + KILL_GRACE_MS;
        }
        if (res->stopped && kill_at_ms != 0 && bb_mono_ms() >= kill_at_ms) {
            kill(-pid, SIGKILL);
            kill_at_ms = 0;
        }
        struct pollfd fds[3];
        nfds_t n = 0;
        if (out_fd >= 0)
            fds[n++] = (struct pollfd){.fd = out_fd, .events = POLLIN};
        if (in_fd >= 0)
            fds[n++] = (struct pollfd){.fd = in_fd, .events = POLLOUT};
        if (pidfd >= 0)
            fds[n++] = (struct pollfd){.fd = pidfd, .events = POLLIN};
        /* Short ticks only to notice the deadline and a worker stop (or,
         * without a pidfd, the exit). */
        int timeout = pidfd >= 0 ? 50 : 5;
        if (poll(fds, n, timeout) < 0 && errno != EINTR)
            break;
        if (out_fd >= 0)
            exec_drain(&out_fd, &res->tail);
        if (in_fd >= 0) {
            ssize_t put = left > 0 ? write(in_fd, payload, left) : 0;
            if (put > 0) {
                payload += put;
                left -= (size_t)put;
            }
            /* Done, or the command closed its stdin (EPIPE): either way. */
            if (left == 0 || (put < 0 && errno != EAGAIN && errno != EINTR)) {
                close(in_fd);
                in_fd = -1;
            }
        }
        exited = waitpid(pid, &res->status, WNOHANG) == pid;
    }
    if (!exited) { /* poll failed: make sure it ends, then reap it */
        kill(-pid, SIGKILL);
        waitpid(pid, &res->status, 0);
    }
    /* What it wrote just before exiting (descendants may hold the pipe). */
    if (out_fd >= 0)
        exec_drain(&out_fd, &res->tail);
    if (out_fd >= 0)
        close(out_fd);
    if (in_fd >= 0)
        close(in_fd);
    if (pidfd >= 0)
        close(pidfd);
    if (res->stopped) /* nothing of the timed-out command may live on */
        kill(-pid, SIGKILL);
}

static bool
exec_code_is_permanent(const json_t *target, int code)
{
    const json_t *codes = json_object_get(target, "permanent_exit_codes");
    for (size_t i = 0; i < json_array_size(codes); i++) {
        if (json_integer_value(json_array_get(codes, i)) == code)
            return true;
    }
    return false;
}

/* The output's tail for an error message (the store makes it valid UTF-8
 * on one line). */
static const char *
exec_output_text(struct bb_buf *tail)
{
    if (tail->data == NULL)
        return "";
    size_t len = tail->len;
    while (len > 0 && (tail->data[len - 1] == '\n' || tail->data[len - 1] == ' '))
        len--;
    size_t start = len > OUTPUT_TAIL_BYTES ? len - OUTPUT_TAIL_BYTES : 0;
    tail->data[len] = '\0';
    return tail->data + start;
}

enum job_verdict
jobs__exec_handle(struct job_run *run)
{
    const struct jobs__exec *x = run->ctx;
    json_t *target = run->job->target ? json_loads(run->job->target, 0, NULL) : NULL;
    struct bb_error e;
    bb_error_clear(&e);
    char resolved[PATH_MAX];
    if (jobs__exec_check_target(x, target, &e) != ERR_OK) {
        bb_buf_printf(&run->error, "exec: %s", e.detail);
        json_decref(target);
        return JOB_FAIL_PERMANENTLY;
    }
    const char *path = json_string_value(json_array_get(json_object_get(target, "argv"), 0));
    if (realpath(path, resolved) == NULL || !exec_path_is_allowed(x, resolved)) {
        bb_buf_printf(&run->error, "exec %s: %s", path,
                      errno == ENOENT ? "no such command"
                                      : "resolves outside the directories --exec-allow names");
        json_decref(target);
        return JOB_FAIL_PERMANENTLY;
    }
    struct exec_args args;
    exec_args_init(&args, target, run);
    int in_fd = -1, out_fd = -1;
    pid_t pid = 0;
    int rc = exec_spawn(resolved, &args, &in_fd, &out_fd, &pid);
    exec_args_deinit(&args);
    if (rc != 0) {
        bb_buf_printf(&run->error, "exec %s: %s", path, strerror(rc));
        json_decref(target);
        return rc == ENOENT || rc == EACCES ? JOB_FAIL_PERMANENTLY : JOB_RETRY;
    }
    struct exec_result res = {.status = 0, .stopped = false};
    bb_buf_init(&res.tail);
    exec_supervise(run, pid, in_fd, out_fd, &res);
    const char *output = exec_output_text(&res.tail);
    enum job_verdict verdict = JOB_RETRY;
    if (res.stopped) {
        bb_buf_printf(&run->error, "exec %s: stopped (%s)%s%s", path,
                      *run->cancel   ? "the worker is stopping"
                      : run->revoked ? "the job was cancelled"
                                     : "timed out",
                      *output ? ": " : "", output);
    } else if (WIFEXITED(res.status) && WEXITSTATUS(res.status) == 0) {
        verdict = JOB_DONE;
    } else if (WIFEXITED(res.status)) {
        int code = WEXITSTATUS(res.status);
        verdict = exec_code_is_permanent(target, code) ? JOB_FAIL_PERMANENTLY : JOB_RETRY;
        bb_buf_printf(&run->error, "exec %s: exit %d%s%s", path, code, *output ? ": " : "", output);
    } else {
        bb_buf_printf(&run->error, "exec %s: killed by signal %d%s%s", path,
                      WIFSIGNALED(res.status) ? WTERMSIG(res.status) : 0, *output ? ": " : "",
                      output);
    }
    bb_buf_deinit(&res.tail);
    json_decref(target);
    return verdict;
}
