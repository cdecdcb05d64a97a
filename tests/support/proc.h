/*
 * proc.h -- run a program as a child process with pipes, for the tests that drive the
 * samples (iocpsrv-console, iocpsrv-echo, iocpsrv-flood) from the outside.
 *
 * The child's stdin is a pipe the test writes to; its stdout and stderr go into one
 * pipe that a reader thread drains into a transcript, so the test waits for output
 * lines with a timeout instead of sleeping, and can print everything the child said
 * when a check fails. POSIX: fork + exec; Windows: CreateProcess with inherited pipe
 * handles (runs under Wine too).
 *
 * Children never outlive the test, even when it dies on a failed CHECK (_exit):
 * Linux kills them through PR_SET_PDEATHSIG when the thread that started them ends
 * (start them from the test's main thread), Windows through a job object with
 * JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE. Start children from one thread at a time.
 */
#ifndef IOCPSRV_TEST_PROC_H
#define IOCPSRV_TEST_PROC_H

#include <stddef.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct tp_proc_s tp_proc_t;

enum {
  TP_TIMEOUT = -1, /* not within the timeout */
  TP_EOF = -2      /* the child's output ended first */
};

/* Turn a path into one the OS can start. On Windows an absolute Linux path
 * ("/work/build/x.exe", as CMake passes it to a test under Wine) becomes Wine's
 * "Z:\work\build\x.exe"; forward slashes become backslashes. Elsewhere a copy. The
 * result is malloc'd. */
char *tp_native_path(const char *path);

/* Start argv[0] (passed through tp_native_path) with the arguments argv[1..] up to a
 * NULL entry. Returns NULL and a reason in err on failure. */
tp_proc_t *tp_start(const char *const *argv, char *err, size_t errcap);

/* Write text to the child's stdin. 0, or -1 if it no longer reads (exited). */
int tp_write(tp_proc_t *p, const char *text);
/* Close the child's stdin: it reads end of input. */
void tp_close_stdin(tp_proc_t *p);

/* How many bytes of output have arrived: a mark for tp_wait_line. */
size_t tp_mark(tp_proc_t *p);

/* Wait up to timeout_ms for a whole output line that starts at or after the mark
 * `from` and contains `needle`. Copies it (without the line end) into line (cap bytes,
 * may be NULL) and returns the mark just after it (> 0), or TP_TIMEOUT / TP_EOF. */
long tp_wait_line(tp_proc_t *p, size_t from, const char *needle, char *line, size_t cap,
                  int timeout_ms);

/* Wait up to timeout_ms for the child to exit and for its output to end. Returns 0 and
 * its exit status in *code (128 + signal number when a signal killed it), or
 * TP_TIMEOUT. */
int tp_wait_exit(tp_proc_t *p, int timeout_ms, int *code);

/* Ask the child to stop as Ctrl+C would: SIGINT on POSIX. Returns 0, or -1 where that
 * is not possible (Windows: a console control event needs a console shared with the
 * child, which tests run from pipes do not have). */
int tp_interrupt(tp_proc_t *p);

/* Everything the child wrote so far, NUL-terminated (malloc'd; the caller frees). */
char *tp_output(tp_proc_t *p);
/* Print the transcript to `out`, each line prefixed with `prefix`. */
void tp_dump(tp_proc_t *p, FILE *out, const char *prefix);

/* Kill the child if it still runs, reap it, free everything. NULL is fine. */
void tp_free(tp_proc_t *p);

/* The program's file name (argv[0] without its directory), for messages. */
const char *tp_name(tp_proc_t *p);

/* For tests (test.h): the same waits, but a timeout or early end of output fails the
 * test with the child's whole transcript, so a failure shows what the child said. */
#define TP_EXPECT_LINE(p, from, needle, line, cap, timeout_ms)                         \
  tp_expect_line_((p), (from), (needle), (line), (cap), (timeout_ms), __FILE__, __LINE__)
#define TP_EXPECT_EXIT(p, timeout_ms) tp_expect_exit_((p), (timeout_ms), __FILE__, __LINE__)
/* Fail the test with a message and the child's transcript. */
#define TP_FAIL(p, ...) tp_fail_((p), __FILE__, __LINE__, __VA_ARGS__)

long tp_expect_line_(tp_proc_t *p, size_t from, const char *needle, char *line, size_t cap,
                     int timeout_ms, const char *file, int srcline);
/* Returns the exit status. */
int tp_expect_exit_(tp_proc_t *p, int timeout_ms, const char *file, int srcline);
void tp_fail_(tp_proc_t *p, const char *file, int srcline, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 4, 5), noreturn))
#endif
    ;

#ifdef __cplusplus
}
#endif

#endif /* IOCPSRV_TEST_PROC_H */
