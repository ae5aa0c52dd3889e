/*
 * main.c: `backbone` dispatches to its subcommands.
 */
#include "cli/cli.h"

#include "http/http.h"

#include <string.h>

static const char USAGE[] =
    "usage: backbone <command> [options]\n"
    "\n"
    "commands:\n"
    "  serve      run the server (HTTP API, workers, scheduler) on SQLite or PostgreSQL\n"
    "  worker     run workers and the scheduler alone, against a shared database\n"
    "  migrate    apply database migrations and exit\n"
    "  jobs       submit, show, list, cancel and retry jobs\n"
    "  queues     list, show, configure, pause and resume queues\n"
    "  schedules  cron and interval schedules: create, list, pause, resume, delete\n"
    "  dlq        the dead-letter queue: list, show, redrive, purge\n"
    "  sagas      saga instances: list, get (with the timeline), retry a stuck one\n"
    "  locks      acquire, renew, release, show and list fenced locks\n"
    "  fenced     fenced writes: put and get values guarded by a fencing token\n"
    "  version    print the version\n"
    "\n"
    "`backbone <command> --help` lists a command's options.\n";

int
main(int argc, char **argv)
{
    bb_tz_init(); /* before any thread: see base.h */
    if (argc < 2) {
        fputs(USAGE, stderr);
        return CLI_USAGE;
    }
    const char *cmd = argv[1];
    int sub_argc = argc - 2;
    char **sub_argv = argv + 2;
    if (strcmp(cmd, "serve") == 0)
        return cli_serve(sub_argc, sub_argv);
    if (strcmp(cmd, "worker") == 0)
        return cli_worker(sub_argc, sub_argv);
    if (strcmp(cmd, "migrate") == 0)
        return cli_migrate(sub_argc, sub_argv);
    if (strcmp(cmd, "version") == 0 || strcmp(cmd, "--version") == 0) {
        printf("backbone %s\n", BB_VERSION);
        return CLI_OK;
    }
    if (strcmp(cmd, "help") == 0 || strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0) {
        fputs(USAGE, stdout);
        return CLI_OK;
    }
    int code;
    http_client_global_init();
    if (strcmp(cmd, "locks") == 0) {
        code = cli_locks(sub_argc, sub_argv);
    } else if (strcmp(cmd, "fenced") == 0) {
        code = cli_fenced(sub_argc, sub_argv);
    } else if (strcmp(cmd, "jobs") == 0) {
        code = cli_jobs(sub_argc, sub_argv);
    } else if (strcmp(cmd, "queues") == 0) {
        code = cli_queues(sub_argc, sub_argv);
    } else if (strcmp(cmd, "schedules") == 0) {
        code = cli_schedules(sub_argc, sub_argv);
    } else if (strcmp(cmd, "dlq") == 0) {
        code = cli_dlq(sub_argc, sub_argv);
    } else if (strcmp(cmd, "sagas") == 0) {
        code = cli_sagas(sub_argc, sub_argv);
    } else {
        fprintf(stderr, "backbone: unknown command '%s'\n\n%s", cmd, USAGE);
        code = CLI_USAGE;
    }
    http_client_global_cleanup();
    return code;
}
