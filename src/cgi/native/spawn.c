// Starts CGI scripts from the runner's own process with clone(CLONE_VM) and execve, reads their stdout and stderr on the event loop, and reports their exits through a pidfd: no fork of the large Node process, and no helper process between the runner and its scripts.
//
// Why in-process: libuv's uv_spawn forks, which copies the page tables of the whole Node process
// and blocks the event loop while it does. With clone(CLONE_VM) nothing is copied. glibc's
// posix_spawn adds CLONE_VFORK, which holds the calling thread until the child has called execve;
// on x86-64 and arm64 the spawn here does not wait (see run_spawn): the event loop goes on with
// its turn, and the child sets itself up when it gets a core. Elsewhere it waits, as posix_spawn does. A helper
// process avoids the fork too, but every request then crosses two more pipes, and each crossing
// that wakes another process costs more than the spawn itself saves (src/http/cgi-measure.ts).
//
// Why the pipes are read here rather than through net.Socket: a net.Socket per pipe costs more CPU
// than the rest of the request (measured: ~0.14 ms each). Here a pipe is one uv_pipe_t, and each
// read reaches JS as one Buffer.
//
// Exits are watched with a pidfd (from clone, or pidfd_open) and a uv_poll handle, so no SIGCHLD
// handler is needed; libuv reaps only the pids it spawned itself and never takes our children.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <node_api.h>
#include <signal.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_pidfd_send_signal
#define SYS_pidfd_send_signal 424
#endif
#ifndef SYS_close_range
#define SYS_close_range 436
#endif
#ifndef CLONE_PIDFD
#define CLONE_PIDFD 0x00001000
#endif

#define STDOUT_PIPE_SIZE (256 * 1024) /* fewer, larger reads for scripts that write a lot */
#define READ_SIZE (256 * 1024)

/* What onEvent(kind, a, b) is told. Keep in step with native-spawner.ts. EV_BATCH carries, in a, the
   events of one turn of the event loop as a flat array of (kind, a, b) triples. */
enum event_kind { EV_STARTED, EV_FAILED, EV_STDOUT, EV_STDOUT_END, EV_STDERR, EV_STDERR_END, EV_EXIT, EV_BATCH };

/** An event waiting for the end of the loop's poll phase. */
typedef struct queued_event {
  struct queued_event *next;
  enum event_kind kind;
  int value;       /* EV_EXIT: the wait status */
  bool flag;       /* EV_EXIT: the group is still alive */
  size_t length;   /* EV_STDOUT, EV_STDERR: the bytes that follow */
  char data[];
} queued_event;

/**
 * Everything the child reads, written before clone and left alone until the script has exited: the
 * runner goes on (and closes its copies of these descriptors) while the child sets itself up.
 */
typedef struct child_block {
  const char *file;
  const char *cwd;
  char *const *argv;
  char *const *envp;
  int stdin_fd; /* -1: /dev/null */
  int stdout_fd;
  int stderr_fd;
  pid_t runner;
  int reset[NSIG]; /* the signals to set back to their default */
  int reset_count;
  volatile int error; /* set by the child when it cannot execute the script */
} child_block;

typedef struct script {
  napi_env env;
  /* What the events are for: handed back to the event handler as its first argument. */
  napi_ref target;
  napi_async_work work;
  /* The spawn's inputs, copied out of JS (a worker thread may use them). */
  char *file;
  char *cwd;
  char **argv;
  char **envp;
  bool with_stdin;
  /* What the child reads, and the error it leaves (see script_child). */
  child_block *child;
  /* Its result. */
  int fds[6]; /* stdin r/w, stdout r/w, stderr r/w */
  pid_t pid;
  int error;
  const char *failed_call; /* the call that failed: "pipe", "clone", … */
  /* While it runs. */
  uv_pipe_t out;
  uv_pipe_t err;
  uv_poll_t exit_poll;
  uv_timer_t first_read; /* ends the wait before the pipes are first read */
  int pidfd;
  bool out_open;
  bool reading_deferred; /* the pipes are not read yet: see watch() */
  uint32_t first_read_delay_ms;
  /* Events read during this turn of the loop, delivered together once the poll phase is over. */
  queued_event *queue_head;
  queued_event *queue_tail;
  struct script *next_pending;
  bool pending;
  size_t queued_bytes; /* stdout bytes queued: past READ_SIZE, reading waits for the delivery */
  bool held;           /* reading stdout stopped until the queue is delivered */
  bool js_paused;      /* reading stdout stopped by JS (backpressure) */
  /* Events can come while the spawn is pending or a uv handle is open; the memory is freed once
     none can and JS has let go of its handle. */
  int sources;
  bool js_held;
  /* The spawn completes inside spawn(): JS is already running, so its events are plain calls. */
  bool inside_js;
} script;

static _Thread_local char read_buffer[READ_SIZE];

// The pids of the scripts started and not reaped yet, recorded by the thread that spawned them as
// soon as clone returns. The orphan sweep never takes one for an orphan (a script started on the
// event loop's thread is listed among its children), and counts them all as running, even those
// whose "started" event has not reached JS yet (livePids()).
static pthread_mutex_t live_lock = PTHREAD_MUTEX_INITIALIZER;
static pid_t *live_pids;
static size_t live_count, live_capacity;

static void add_live(pid_t pid) {
  pthread_mutex_lock(&live_lock);
  if (live_count == live_capacity) {
    size_t capacity = live_capacity ? live_capacity * 2 : 64;
    pid_t *grown = realloc(live_pids, capacity * sizeof *grown);
    if (grown) {
      live_pids = grown;
      live_capacity = capacity;
    }
  }
  if (live_count < live_capacity) live_pids[live_count++] = pid;
  pthread_mutex_unlock(&live_lock);
}

static void remove_live(pid_t pid) {
  pthread_mutex_lock(&live_lock);
  for (size_t i = 0; i < live_count; i++) {
    if (live_pids[i] == pid) {
      live_pids[i] = live_pids[--live_count];
      break;
    }
  }
  pthread_mutex_unlock(&live_lock);
}

static bool is_live(pid_t pid) {
  bool found = false;
  pthread_mutex_lock(&live_lock);
  for (size_t i = 0; i < live_count && !found; i++) found = live_pids[i] == pid;
  pthread_mutex_unlock(&live_lock);
  return found;
}

static void throw_errno(napi_env env, const char *what, int err) {
  char message[512];
  snprintf(message, sizeof message, "%s: %s", what, strerror(err));
  napi_value code, text, error;
  const char *name = strerrorname_np(err);
  napi_create_string_utf8(env, name ? name : "EIO", NAPI_AUTO_LENGTH, &code);
  napi_create_string_utf8(env, message, NAPI_AUTO_LENGTH, &text);
  napi_create_error(env, code, text, &error);
  napi_throw(env, error);
}

/** A JS string as a malloc'd C string (NUL bytes are refused before they get here). */
static char *string_arg(napi_env env, napi_value value) {
  size_t length = 0;
  if (napi_get_value_string_utf8(env, value, NULL, 0, &length) != napi_ok) return NULL;
  char *text = malloc(length + 1);
  if (!text) return NULL;
  napi_get_value_string_utf8(env, value, text, length + 1, &length);
  return text;
}

static void free_vector(char **vector) {
  if (!vector) return;
  for (char **p = vector; *p; p++) free(*p);
  free(vector);
}

/**
 * A JS string of NUL-terminated entries ("NAME=value\0NAME=value\0") as a NULL-terminated vector
 * pointing into one malloc'd block (vector and text together), or NULL. One copy out of JS for the
 * whole environment instead of two calls per variable.
 */
static char **nul_separated(napi_env env, napi_value value) {
  size_t length = 0;
  if (napi_get_value_string_utf8(env, value, NULL, 0, &length) != napi_ok) return NULL;
  size_t count = 0;
  char *scratch = malloc(length + 1);
  if (!scratch) return NULL;
  napi_get_value_string_utf8(env, value, scratch, length + 1, &length);
  for (size_t i = 0; i < length; i++) count += scratch[i] == '\0';
  char **vector = malloc((count + 1) * sizeof(char *) + length + 1);
  if (!vector) {
    free(scratch);
    return NULL;
  }
  char *text = (char *)(vector + count + 1);
  memcpy(text, scratch, length + 1);
  free(scratch);
  size_t n = 0;
  for (size_t start = 0, i = 0; i < length; i++) {
    if (text[i] != '\0') continue;
    vector[n++] = text + start;
    start = i + 1;
  }
  vector[n] = NULL;
  return vector;
}

/** A JS array of strings as a NULL-terminated, malloc'd vector, or NULL. */
static char **string_array(napi_env env, napi_value array) {
  uint32_t count = 0;
  if (napi_get_array_length(env, array, &count) != napi_ok) return NULL;
  char **vector = calloc(count + 1, sizeof(char *));
  if (!vector) return NULL;
  for (uint32_t i = 0; i < count; i++) {
    napi_value item;
    napi_get_element(env, array, i, &item);
    if (!(vector[i] = string_arg(env, item))) {
      free_vector(vector);
      return NULL;
    }
  }
  return vector;
}

static void close_fds(script *s) {
  for (int i = 0; i < 6; i++)
    if (s->fds[i] >= 0) close(s->fds[i]);
  for (int i = 0; i < 6; i++) s->fds[i] = -1;
}

static void free_script(script *s) {
  close_fds(s);
  free(s->file);
  free(s->cwd);
  free_vector(s->argv);
  free(s->envp); /* one block: see nul_separated() */
  free(s->child);
  free(s);
}

/** One source of events is done (the spawn, or a uv handle that closed), or JS let go (from_js). */
static void release(script *s, bool from_js) {
  if (from_js) s->js_held = false;
  else if (--s->sources == 0) {
    // No event can follow: let go of the target, which also lets the JS handle be collected (the
    // target holds it).
    napi_delete_reference(s->env, s->target);
  }
  if (s->sources == 0 && !s->js_held) free_script(s);
}

/**
 * The event handler and the one async context its calls run in, per Node environment (worker
 * threads have their own). One handler for every script rather than a closure each: a closure and
 * an async resource per script were allocated in JS, held by handles from here, for every request.
 */
typedef struct {
  napi_ref handler;
  napi_async_context context;
} addon_state;

static void free_state(napi_env env, void *data, void *hint) {
  (void)hint;
  addon_state *state = data;
  if (state->handler) napi_delete_reference(env, state->handler);
  if (state->context) napi_async_destroy(env, state->context);
  free(state);
}

/**
 * Calls handler(target, kind, a, b). From the event loop it is a callback of its own, running the
 * microtasks it queues (as libuv's own callbacks do); from inside spawn() JS is already running,
 * and it is a plain call.
 */
static void emit(script *s, enum event_kind kind, napi_value a, napi_value b) {
  napi_env env = s->env;
  addon_state *state = NULL;
  napi_get_instance_data(env, (void **)&state);
  napi_value callback, recv, undefined, argv[4], result;
  napi_get_reference_value(env, state->handler, &callback);
  napi_get_reference_value(env, s->target, &argv[0]);
  napi_get_global(env, &recv); /* napi_make_callback wants an object */
  napi_get_undefined(env, &undefined);
  napi_create_int32(env, kind, &argv[1]);
  argv[2] = a ? a : undefined;
  argv[3] = b ? b : undefined;
  napi_status status = s->inside_js ? napi_call_function(env, recv, callback, 4, argv, &result)
                                     : napi_make_callback(env, state->context, recv, callback, 4, argv, &result);
  if (status == napi_pending_exception) {
    // An exception thrown by the handler is the runner's bug: surface it as Node would.
    napi_value exception;
    napi_get_and_clear_last_exception(env, &exception);
    napi_fatal_exception(env, exception);
  }
}

// Batching. A script's output, the ends of its pipes and its exit often become ready together; each
// call into JS (with its microtask checkpoint) costs more than the event itself. Events read during
// the poll phase are queued and delivered in one call per script from a check handle, which libuv
// runs right after the poll phase of the same turn: nothing waits longer than it did.
static void on_alloc(uv_handle_t *handle, size_t suggested, uv_buf_t *buf);
static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf);

static _Thread_local uv_check_t flush_check;
static _Thread_local bool flush_check_ready;
static _Thread_local script *pending_head;
static _Thread_local script *pending_tail;

static void flush_pending(uv_check_t *check) {
  script *list = pending_head;
  pending_head = pending_tail = NULL;
  uv_check_stop(check);
  while (list) {
    script *s = list;
    list = s->next_pending;
    s->next_pending = NULL;
    s->pending = false;
    queued_event *event = s->queue_head;
    s->queue_head = s->queue_tail = NULL;
    napi_env env = s->env;
    napi_handle_scope scope;
    napi_open_handle_scope(env, &scope);
    napi_value batch;
    napi_create_array(env, &batch);
    uint32_t index = 0;
    while (event) {
      queued_event *next = event->next;
      napi_value kind, a, b;
      napi_create_int32(env, event->kind, &kind);
      if (event->kind == EV_STDOUT || event->kind == EV_STDERR) {
        void *copy;
        napi_create_buffer_copy(env, event->length, event->data, &copy, &a);
      } else if (event->kind == EV_EXIT) {
        napi_create_int32(env, event->value, &a);
      } else if (event->kind == EV_FAILED) {
        napi_create_string_utf8(env, event->data, event->length, &a);
      } else {
        napi_get_undefined(env, &a);
      }
      if (event->kind == EV_EXIT) napi_get_boolean(env, event->flag, &b);
      else napi_get_undefined(env, &b);
      napi_set_element(env, batch, index++, kind);
      napi_set_element(env, batch, index++, a);
      napi_set_element(env, batch, index++, b);
      free(event);
      event = next;
    }
    s->queued_bytes = 0;
    emit(s, EV_BATCH, batch, NULL);
    napi_close_handle_scope(env, scope);
    if (s->held) {
      s->held = false;
      if (s->out_open && !s->js_paused && !s->reading_deferred) uv_read_start((uv_stream_t *)&s->out, on_alloc, on_read);
    }
    // The hold queue() took: the script may be freed now if its handles have closed meanwhile.
    release(s, false);
  }
}

/** Queues an event of s for delivery after the poll phase. */
static void queue(script *s, enum event_kind kind, const char *data, size_t length, int value, bool flag) {
  queued_event *event = malloc(sizeof *event + length);
  if (!event) return; /* out of memory: the event is lost, and so is the request */
  event->next = NULL;
  event->kind = kind;
  event->value = value;
  event->flag = flag;
  event->length = length;
  if (length) memcpy(event->data, data, length);
  if (s->queue_tail) s->queue_tail->next = event;
  else s->queue_head = event;
  s->queue_tail = event;
  if (s->pending) return;
  s->pending = true;
  s->sources++; /* delivery is a source of events too: the script stays until it is done */
  s->next_pending = NULL;
  // Kept in arrival order, so a script's events and different scripts' events stay in order.
  if (pending_tail) pending_tail->next_pending = s;
  else pending_head = s;
  pending_tail = s;
  if (!flush_check_ready) {
    uv_loop_t *loop = NULL;
    napi_get_uv_event_loop(s->env, &loop);
    uv_check_init(loop, &flush_check);
    uv_unref((uv_handle_t *)&flush_check);
    flush_check_ready = true;
  }
  uv_check_start(&flush_check, flush_pending);
}

static void on_handle_closed(uv_handle_t *handle) {
  release((script *)handle->data, false);
}

static void on_alloc(uv_handle_t *handle, size_t suggested, uv_buf_t *buf) {
  (void)handle;
  (void)suggested;
  *buf = uv_buf_init(read_buffer, READ_SIZE);
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf) {
  script *s = (script *)stream->data;
  bool is_out = stream == (uv_stream_t *)&s->out;
  if (nread == 0) return; /* EAGAIN */
  if (nread > 0) {
    queue(s, is_out ? EV_STDOUT : EV_STDERR, buf->base, (size_t)nread, 0, false);
    // libuv reads on while data comes: bound what waits here for JS, which applies backpressure.
    if (is_out && (s->queued_bytes += (size_t)nread) >= READ_SIZE && !s->held) {
      s->held = true;
      uv_read_stop(stream);
    }
  } else {
    // EOF, or a read error (treated as the end: what was read is all there is).
    if (is_out) {
      if (s->out_open) {
        s->out_open = false;
        uv_close((uv_handle_t *)stream, on_handle_closed);
      }
    } else {
      uv_close((uv_handle_t *)stream, on_handle_closed);
    }
    queue(s, is_out ? EV_STDOUT_END : EV_STDERR_END, NULL, 0, 0, false);
  }
}

/** Starts libuv's reading of stdout (unless JS or the queue holds it) and stderr. */
static void start_reading(script *s) {
  if (s->out_open && !s->held && !s->js_paused) uv_read_start((uv_stream_t *)&s->out, on_alloc, on_read);
  uv_read_start((uv_stream_t *)&s->err, on_alloc, on_read);
}

/**
 * Reads what a pipe holds now, as libuv's reading would (on_read), up to its end. A pipe that is
 * still open (a process the script left behind holds it) is then read by libuv as usual, and so is
 * one that still has data after a pipe's worth: a background job that keeps writing must not hold
 * the event loop here.
 */
static void drain_pipe(script *s, uv_stream_t *stream) {
  bool is_out = stream == (uv_stream_t *)&s->out;
  uv_os_fd_t fd;
  if (uv_fileno((uv_handle_t *)stream, &fd) != 0) return;
  for (size_t drained = 0;;) {
    if (is_out && s->held) return; /* flush_pending() starts libuv's reading once the queue is delivered */
    if (drained >= STDOUT_PIPE_SIZE) {
      uv_read_start(stream, on_alloc, on_read);
      return;
    }
    ssize_t n = read(fd, read_buffer, READ_SIZE);
    if (n > 0) drained += (size_t)n;
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == EAGAIN) {
      uv_read_start(stream, on_alloc, on_read);
      return;
    }
    uv_buf_t buf = uv_buf_init(read_buffer, READ_SIZE);
    on_read(stream, n > 0 ? n : n == 0 ? UV_EOF : -errno, &buf);
    if (n <= 0) return; /* the end (or a read error, taken as the end): on_read closed the handle */
  }
}

/** The wait is over, or the script has exited: the pipes are read from now on. */
static void end_deferral(script *s, bool exited) {
  if (!s->reading_deferred) return;
  s->reading_deferred = false;
  uv_timer_stop(&s->first_read);
  uv_close((uv_handle_t *)&s->first_read, on_handle_closed);
  if (!exited) {
    start_reading(s);
    return;
  }
  if (s->out_open) drain_pipe(s, (uv_stream_t *)&s->out);
  drain_pipe(s, (uv_stream_t *)&s->err);
}

static void on_first_read_due(uv_timer_t *timer) {
  end_deferral((script *)timer->data, false);
}

/** The pidfd is readable: the script has exited. Reap it and report (wait status, group still alive). */
static void on_exit_ready(uv_poll_t *poll, int status, int events) {
  (void)status;
  (void)events;
  script *s = (script *)poll->data;
  int wait_status = 0;
  pid_t reaped;
  do reaped = waitpid(s->pid, &wait_status, WNOHANG);
  while (reaped < 0 && errno == EINTR);
  if (reaped == 0) return; /* not yet */
  if (reaped < 0) wait_status = -1; /* reaped elsewhere: the status is lost */
  remove_live(s->pid);
  // Other members of its process group (background jobs) still running? EPERM means they exist.
  bool group_left = kill(-s->pid, 0) == 0 || errno == EPERM;
  uv_close((uv_handle_t *)poll, on_handle_closed);
  close(s->pidfd);
  s->pidfd = -1;
  // A script that exits before its pipes were first read: its whole output, the ends of its pipes
  // and its exit reach JS together.
  end_deferral(s, true);
  // The child could not execute the script (see script_child): its error, then its exit.
  if (s->child && s->child->error) {
    char message[4300];
    int length = snprintf(message, sizeof message, "cannot execute %s: %s", s->file, strerror(s->child->error));
    queue(s, EV_FAILED, message, length < 0 ? 0 : (size_t)length >= sizeof message ? sizeof message - 1 : (size_t)length, 0, false);
  }
  queue(s, EV_EXIT, NULL, 0, wait_status, group_left);
}

// Signals that are not at their default in the runner: ignored ones (Node ignores SIGPIPE), which
// would stay ignored across execve, and handled ones, whose handlers must not run in the child
// while it still shares the runner's memory. Asking the kernel about every signal costs a system
// call each, more than the rest of a spawn, so the answer is kept: for a second, and until a signal
// gets its first listener in JS, which is when Node installs a handler (forgetDispositions()).
static pthread_mutex_t dispositions_lock = PTHREAD_MUTEX_INITIALIZER;
static sigset_t non_default;
static struct timespec dispositions_read; /* zero: never */

static void non_default_signals(sigset_t *out) {
  struct timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  pthread_mutex_lock(&dispositions_lock);
  if (dispositions_read.tv_sec == 0 || now.tv_sec - dispositions_read.tv_sec >= 1) {
    sigemptyset(&non_default);
    for (int sig = 1; sig < NSIG; sig++) {
      struct sigaction current;
      // Fails for SIGKILL, SIGSTOP and glibc's own signals, which are never ours to change.
      if (sigaction(sig, NULL, &current) == 0 && current.sa_handler != SIG_DFL) sigaddset(&non_default, sig);
    }
    dispositions_read = now;
  }
  *out = non_default;
  pthread_mutex_unlock(&dispositions_lock);
}

/** forgetDispositions(): a signal got its first listener in JS (Node installs a handler): read them all again at the next spawn. */
static napi_value forget_dispositions(napi_env env, napi_callback_info info) {
  (void)env;
  (void)info;
  pthread_mutex_lock(&dispositions_lock);
  dispositions_read.tv_sec = 0;
  dispositions_read.tv_nsec = 0;
  pthread_mutex_unlock(&dispositions_lock);
  return NULL;
}

// The child runs on the runner's memory (CLONE_VM) until it calls execve, while the runner goes on
// running (see run_spawn): it must not touch what the runner's threads use, not errno (the calling
// thread's, through its TLS), not a lock in libc. So it makes its system calls here, and reports
// failure by return value.
#if defined(__x86_64__) || defined(__aarch64__)
#define SPAWN_WITHOUT_WAITING 1
static inline long raw_call(long n, long a, long b, long c, long d) {
#if defined(__x86_64__)
  long ret;
  register long r10 __asm__("r10") = d;
  __asm__ volatile("syscall" : "=a"(ret) : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10) : "rcx", "r11", "memory");
  return ret;
#else
  register long x8 __asm__("x8") = n;
  register long x0 __asm__("x0") = a;
  register long x1 __asm__("x1") = b;
  register long x2 __asm__("x2") = c;
  register long x3 __asm__("x3") = d;
  __asm__ volatile("svc 0" : "+r"(x0) : "r"(x8), "r"(x1), "r"(x2), "r"(x3) : "memory", "cc");
  return x0;
#endif
}
#else
// Elsewhere the spawn waits for execve (CLONE_VFORK): the calling thread is held meanwhile, so
// libc's wrapper may set its errno.
static inline long raw_call(long n, long a, long b, long c, long d) {
  long ret = syscall(n, a, b, c, d);
  return ret < 0 ? -errno : ret;
}
#endif

/**
 * The child, between clone and execve: only system calls, and nothing written but its error. Any
 * failure here (setsid, the descriptors, the directory, execve itself) is reported as "cannot
 * execute"; an execve that fails past its point of no return kills the child with SIGSEGV, which
 * its exit then says.
 */
static int script_child(void *arg) {
  child_block *c = arg;
  // The kernel's struct sigaction, all zero: SIG_DFL, no flags, nothing blocked in the handler.
  unsigned long default_action[4] = {0, 0, 0, 0};
  for (int i = 0; i < c->reset_count; i++) raw_call(SYS_rt_sigaction, c->reset[i], (long)default_action, 0, 8);
  long r;
  // A new session makes the script lead its own process group: one kill(-pid) reaches all it starts.
  if ((r = raw_call(SYS_setsid, 0, 0, 0, 0)) < 0) goto failed;
  // The runner's death, even by SIGKILL (which runs none of its clean-up), takes the script with it:
  // nothing else would end a script that runs on. Best effort: processes the script starts are not
  // covered (the setting is not inherited across fork), the kernel clears it when a set-user-ID or
  // file-capability program is executed, and a seccomp filter may refuse it (the script then runs
  // without it). The signal comes when the thread that spawned the script ends: the event loop's
  // thread (or, where the spawn waits, a libuv worker), as long-lived as the runner. If the runner
  // died before this, the script ends now.
  if (raw_call(SYS_prctl, PR_SET_PDEATHSIG, SIGKILL, 0, 0) == 0 && raw_call(SYS_getppid, 0, 0, 0, 0) != c->runner) {
    r = -ESRCH;
    goto failed;
  }
  long in = c->stdin_fd;
  if (in < 0 && (r = in = raw_call(SYS_openat, AT_FDCWD, (long)"/dev/null", O_RDONLY | O_CLOEXEC, 0)) < 0) goto failed;
  // (Node keeps descriptors 0 to 2 open, so no pipe end is one of them: dup3 never gets old == new.)
  if ((r = raw_call(SYS_dup3, in, 0, 0, 0)) < 0) goto failed;
  if ((r = raw_call(SYS_dup3, c->stdout_fd, 1, 0, 0)) < 0) goto failed;
  if ((r = raw_call(SYS_dup3, c->stderr_fd, 2, 0, 0)) < 0) goto failed;
  // RFC 3875 §7.2: the script runs in its own directory.
  if ((r = raw_call(SYS_chdir, (long)c->cwd, 0, 0, 0)) < 0) goto failed;
  // Descriptors Node opened without O_CLOEXEC (or another addon did) must not reach the script.
  raw_call(SYS_close_range, 3, ~0U, 0, 0);
  unsigned long none = 0;
  raw_call(SYS_rt_sigprocmask, SIG_SETMASK, (long)&none, 0, 8);
  r = raw_call(SYS_execve, (long)c->file, (long)c->argv, (long)c->envp, 0);
failed:
  c->error = (int)-r;
  raw_call(SYS_exit_group, 127, 0, 0, 0);
  return 127;
}

// The children's stacks. The kernel clears a stack's word when its child calls execve or exits
// (CLONE_CHILD_CLEARTID): the stack is free again from then on. Kept, not unmapped: an unmap costs
// a TLB flush on every core the runner has run on.
#define CHILD_STACK_SIZE (32 * 1024)
typedef struct child_stack {
  struct child_stack *next;
  pid_t in_use; /* cleared by the kernel */
  char *base;
} child_stack;
static pthread_mutex_t stacks_lock = PTHREAD_MUTEX_INITIALIZER;
static child_stack *stacks;

static child_stack *take_stack(void) {
  pthread_mutex_lock(&stacks_lock);
  child_stack *found = stacks;
  while (found && __atomic_load_n(&found->in_use, __ATOMIC_ACQUIRE) != 0) found = found->next;
  if (!found && (found = calloc(1, sizeof *found))) {
    // Mapped once, with a guard page below it: a child that overran its stack would otherwise write
    // over the runner's memory.
    long page = sysconf(_SC_PAGESIZE);
    char *map = mmap(NULL, CHILD_STACK_SIZE + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
    if (map != MAP_FAILED && mprotect(map, page, PROT_NONE) == 0) {
      found->base = map + page;
      found->next = stacks;
      stacks = found;
    } else {
      if (map != MAP_FAILED) munmap(map, CHILD_STACK_SIZE + page);
      free(found);
      found = NULL;
    }
  }
  if (found) found->in_use = 1;
  pthread_mutex_unlock(&stacks_lock);
  return found;
}

/**
 * The spawn itself: no JS and no N-API here, since it may run on a worker thread. It uses
 * clone(CLONE_VM), which copies nothing, as glibc's posix_spawn does. Unlike posix_spawn, on x86-64
 * and arm64 it does not add CLONE_VFORK, which holds the calling thread until the child has called
 * execve: the event loop goes on with the request (and the next ones), and no spawn is handed to a
 * worker thread to wait there (at 16 connections, 8% more requests/s than waiting on worker
 * threads). The kernel most often queues the child on the calling thread's own core, where it runs
 * once the event loop waits: moving it to an idle core (sched_setaffinity) cost the runner more
 * than it saved (see the README). So a failure to execute the script reaches
 * JS with its exit (see on_exit_ready). Also unlike posix_spawn, it resets only the signals that
 * are not at their default, and it reuses the child's stacks instead of mapping one per spawn,
 * whose unmap costs a TLB flush on every core the runner runs on: together 40% of a spawn's time.
 */
static void run_spawn(script *s) {
  int *fds = s->fds;
  if ((s->with_stdin && pipe2(&fds[0], O_CLOEXEC) < 0) || pipe2(&fds[2], O_CLOEXEC) < 0 || pipe2(&fds[4], O_CLOEXEC) < 0) {
    s->error = errno;
    s->failed_call = "pipe";
    return;
  }
  fcntl(fds[2], F_SETPIPE_SZ, STDOUT_PIPE_SIZE); /* best effort */
  child_block *c = s->child = calloc(1, sizeof *c);
  child_stack *stack = c ? take_stack() : NULL;
  if (!stack) {
    s->error = ENOMEM;
    s->failed_call = "spawn";
    return;
  }
  c->file = s->file;
  c->cwd = s->cwd;
  c->argv = s->argv;
  c->envp = s->envp;
  c->stdin_fd = s->with_stdin ? fds[0] : -1;
  c->stdout_fd = fds[3];
  c->stderr_fd = fds[5];
  c->runner = getpid();
  sigset_t reset;
  non_default_signals(&reset);
  for (int sig = 1; sig < NSIG; sig++)
    if (sigismember(&reset, sig)) c->reset[c->reset_count++] = sig;
  // Every signal blocked from before the clone until the child has reset its handlers: none can
  // run a handler of the runner's in the child.
  sigset_t all, previous;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &previous);
  int flags = CLONE_VM | CLONE_PIDFD | CLONE_CHILD_CLEARTID | SIGCHLD;
#ifndef SPAWN_WITHOUT_WAITING
  flags |= CLONE_VFORK;
#endif
  int pidfd = -1;
  pid_t pid = clone(script_child, stack->base + CHILD_STACK_SIZE, flags, c, &pidfd, NULL, &stack->in_use);
  int clone_error = errno;
  if (pid > 0) add_live(pid);
  pthread_sigmask(SIG_SETMASK, &previous, NULL);
  if (pid < 0) {
    __atomic_store_n(&stack->in_use, 0, __ATOMIC_RELEASE);
    s->error = clone_error;
    s->failed_call = "clone";
    return;
  }
  s->pid = pid;
  s->pidfd = pidfd;
  // The runner keeps only its own ends. (The child has its own descriptor table, copied by clone.)
  close(fds[3]);
  close(fds[5]);
  if (s->with_stdin) close(fds[0]);
  fds[3] = fds[5] = fds[0] = -1;
}

static void execute_spawn(napi_env env, void *data) {
  (void)env;
  run_spawn((script *)data);
}

/** Starts reading stdout and stderr and watching the exit; 0, or an errno (the script is then killed and reaped). */
static int watch(script *s) {
  uv_loop_t *loop = NULL;
  napi_get_uv_event_loop(s->env, &loop);
  if (s->pidfd < 0) s->pidfd = (int)syscall(SYS_pidfd_open, s->pid, 0);
  if (s->pidfd < 0) {
    int err = errno;
    kill(s->pid, SIGKILL); /* itself: it may not have made its process group yet */
    kill(-s->pid, SIGKILL);
    waitpid(s->pid, NULL, 0);
    remove_live(s->pid);
    return err;
  }
  uv_pipe_init(loop, &s->out, 0);
  uv_pipe_init(loop, &s->err, 0);
  uv_poll_init(loop, &s->exit_poll, s->pidfd);
  uv_timer_init(loop, &s->first_read);
  s->out.data = s->err.data = s->exit_poll.data = s->first_read.data = s;
  s->sources += 4;
  uv_pipe_open(&s->out, s->fds[2]);
  uv_pipe_open(&s->err, s->fds[4]);
  s->fds[2] = s->fds[4] = -1; /* owned by the handles now */
  s->out_open = true;
  // Most small scripts write their answer and exit within a few milliseconds. Reading the pipes only
  // once the script has exited (or firstReadDelayMs has passed) saves a wake-up of the event loop, and a
  // call into JS, per request: the output, the ends of the pipes and the exit come together, and the
  // response goes out whole, in one write with its length. A script that takes longer is read as it
  // writes from then on; a pipe holds 256 KiB, so no script blocks on a full one before that.
  s->reading_deferred = true;
  uv_timer_start(&s->first_read, on_first_read_due, s->first_read_delay_ms, 0);
  uv_poll_start(&s->exit_poll, UV_READABLE, on_exit_ready);
  return 0;
}

/** Back on the event loop: EV_STARTED (pid, stdin fd or -1) or EV_FAILED (reason). */
static void complete_spawn(napi_env env, napi_status status, void *data) {
  script *s = (script *)data;
  if (s->work) {
    napi_delete_async_work(env, s->work);
    s->work = NULL;
  }
  if (status != napi_ok && !s->error) {
    s->error = ECANCELED;
    s->failed_call = "spawn";
  }
  if (!s->error) {
    int err = watch(s);
    if (err) {
      s->error = err;
      s->failed_call = "pidfd_open";
    }
  }
  napi_handle_scope scope;
  napi_open_handle_scope(env, &scope);
  if (s->error) {
    char message[4300];
    snprintf(message, sizeof message, "cannot start %s: %s: %s", s->file, s->failed_call, strerror(s->error));
    napi_value reason;
    napi_create_string_utf8(env, message, NAPI_AUTO_LENGTH, &reason);
    close_fds(s);
    emit(s, EV_FAILED, reason, NULL);
  } else {
    napi_value pid, stdin_fd;
    napi_create_int32(env, s->pid, &pid);
    napi_create_int32(env, s->with_stdin ? s->fds[1] : -1, &stdin_fd);
    s->fds[1] = -1; /* owned by JS now */
    emit(s, EV_STARTED, pid, stdin_fd);
  }
  napi_close_handle_scope(env, scope);
  release(s, false); /* the spawn is done */
}

static void finalize_handle(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  release((script *)data, true);
}

static script *script_arg(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value arg;
  void *data = NULL;
  napi_get_cb_info(env, info, &argc, &arg, NULL, NULL);
  if (argc < 1 || napi_get_value_external(env, arg, &data) != napi_ok) return NULL;
  return (script *)data;
}

/**
 * setEventHandler(handler): the function every script's events go to, as handler(target, kind, a, b)
 * with the target given to spawn(). Called once, before the first spawn.
 */
static napi_value set_event_handler(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value handler;
  napi_get_cb_info(env, info, &argc, &handler, NULL, NULL);
  napi_valuetype type = napi_undefined;
  if (argc < 1 || napi_typeof(env, handler, &type) != napi_ok || type != napi_function) {
    napi_throw_type_error(env, NULL, "setEventHandler(handler)");
    return NULL;
  }
  addon_state *state = NULL;
  napi_get_instance_data(env, (void **)&state);
  if (!state) {
    if (!(state = calloc(1, sizeof *state))) {
      napi_throw_error(env, NULL, "cgi: out of memory");
      return NULL;
    }
    napi_value name;
    napi_create_string_utf8(env, "cgi-script", NAPI_AUTO_LENGTH, &name);
    // No resource of ours: Node then makes one and keeps it for the context's life.
    napi_async_init(env, NULL, name, &state->context);
    napi_set_instance_data(env, state, free_state, NULL);
  }
  if (state->handler) napi_delete_reference(env, state->handler);
  napi_create_reference(env, handler, 1, &state->handler);
  return NULL;
}

/**
 * spawn(file, argv, env, cwd, withStdin, inThread, target, firstReadDelayMs) → handle, env being "NAME=value\0" entries in one string
 * The script leads a new session (its own process group), starts in cwd with every signal at its
 * default and none blocked, and inherits no descriptor but 0, 1 and 2; without stdin it reads
 * /dev/null. The event handler gets (target, kind, a, b): in order, started (pid, stdin fd or -1)
 * or failed (reason); then stdout and stderr chunks and their ends, and the exit (wait status,
 * group still alive), the last three in any order. With inThread the spawn runs on a worker
 * thread; otherwise "started" or "failed" comes before spawn returns. The pipes are first read when
 * the script exits or firstReadDelayMs after its start, whichever comes first (see watch()).
 */
static napi_value spawn_script(napi_env env, napi_callback_info info) {
  size_t argc = 8;
  napi_value args[8];
  napi_get_cb_info(env, info, &argc, args, NULL, NULL);
  if (argc < 8) {
    napi_throw_type_error(env, NULL, "spawn(file, argv, env, cwd, withStdin, inThread, target, firstReadDelayMs)");
    return NULL;
  }
  addon_state *state = NULL;
  napi_get_instance_data(env, (void **)&state);
  if (!state || !state->handler) {
    napi_throw_error(env, NULL, "cgi: setEventHandler() must come before spawn()");
    return NULL;
  }
  script *s = calloc(1, sizeof *s);
  if (!s) {
    napi_throw_error(env, NULL, "cgi: out of memory");
    return NULL;
  }
  for (int i = 0; i < 6; i++) s->fds[i] = -1;
  s->pidfd = -1;
  s->env = env;
  s->sources = 1; /* the spawn */
  bool in_thread = false;
  napi_get_value_bool(env, args[4], &s->with_stdin);
  napi_get_value_bool(env, args[5], &in_thread);
  napi_get_value_uint32(env, args[7], &s->first_read_delay_ms);
  s->file = string_arg(env, args[0]);
  s->argv = string_array(env, args[1]);
  s->envp = nul_separated(env, args[2]);
  s->cwd = string_arg(env, args[3]);
  if (!s->file || !s->argv || !s->envp || !s->cwd) {
    free_script(s);
    napi_throw_error(env, NULL, "cgi: cannot read the spawn arguments");
    return NULL;
  }
  napi_value handle;
  napi_create_reference(env, args[6], 1, &s->target);
  s->js_held = true;
  napi_create_external(env, s, finalize_handle, NULL, &handle);
  if (in_thread) {
    napi_value name;
    napi_create_string_utf8(env, "cgi-spawn", NAPI_AUTO_LENGTH, &name);
    if (napi_create_async_work(env, NULL, name, execute_spawn, complete_spawn, s, &s->work) == napi_ok && napi_queue_async_work(env, s->work) == napi_ok) return handle;
  }
  run_spawn(s);
  s->inside_js = true;
  complete_spawn(env, napi_ok, s);
  s->inside_js = false;
  return handle;
}

/**
 * signalScript(handle, signal) → false once the script has been reaped. The signal goes to the
 * script itself, through its pidfd: a script just started may not have made its process group yet
 * (the spawn does not wait for it), and the pidfd cannot reach another process that got its pid.
 */
static napi_value signal_script(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value args[2], result;
  napi_get_cb_info(env, info, &argc, args, NULL, NULL);
  void *data = NULL;
  int32_t sig = 0;
  bool sent = false;
  if (argc == 2 && napi_get_value_external(env, args[0], &data) == napi_ok && napi_get_value_int32(env, args[1], &sig) == napi_ok) {
    script *s = data;
    sent = s->pidfd >= 0 && syscall(SYS_pidfd_send_signal, s->pidfd, sig, NULL, 0) == 0;
  }
  napi_get_boolean(env, sent, &result);
  return result;
}

/** pause(handle) / resume(handle): stop and restart reading stdout (backpressure). */
static napi_value pause_stdout(napi_env env, napi_callback_info info) {
  script *s = script_arg(env, info);
  if (s && s->out_open) {
    s->js_paused = true;
    uv_read_stop((uv_stream_t *)&s->out);
  }
  return NULL;
}

static napi_value resume_stdout(napi_env env, napi_callback_info info) {
  script *s = script_arg(env, info);
  if (s && s->out_open) {
    s->js_paused = false;
    if (!s->held && !s->reading_deferred) uv_read_start((uv_stream_t *)&s->out, on_alloc, on_read);
  }
  return NULL;
}

/** closeStdout(handle): nobody will read the rest; the script gets EPIPE (SIGPIPE) on its next write. No end event follows. */
static napi_value close_stdout(napi_env env, napi_callback_info info) {
  script *s = script_arg(env, info);
  if (s && s->out_open) {
    s->out_open = false;
    uv_close((uv_handle_t *)&s->out, on_handle_closed);
  }
  return NULL;
}

/**
 * setSubreaper(on) → whether it was one: orphans of our scripts' descendants become our children
 * (PR_SET_CHILD_SUBREAPER) while on. The previous setting is returned so that it can be restored.
 */
static napi_value set_subreaper(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  bool on = false;
  if (argc < 1 || napi_get_value_bool(env, argv[0], &on) != napi_ok) {
    napi_throw_type_error(env, NULL, "cgi: setSubreaper(on) needs a boolean");
    return NULL;
  }
  int was = 0;
  if (prctl(PR_GET_CHILD_SUBREAPER, &was, 0, 0, 0) < 0 || prctl(PR_SET_CHILD_SUBREAPER, on ? 1 : 0, 0, 0, 0) < 0) {
    throw_errno(env, "cgi: prctl(PR_SET_CHILD_SUBREAPER)", errno);
    return NULL;
  }
  napi_value result;
  napi_get_boolean(env, was != 0, &result);
  return result;
}

/**
 * otherChildren() → the pids of the children (zombies included) of the runner's main thread that
 * are not scripts. The kernel hands an orphan to the first live thread of its subreaper, the main
 * thread, and Node's child_process starts its children there too; scripts spawned on worker threads
 * are listed under those, and are not wanted here anyway.
 */
static napi_value other_children(napi_env env, napi_callback_info info) {
  (void)info;
  napi_value result;
  napi_create_array(env, &result);
  uint32_t count = 0;
  char path[64];
  snprintf(path, sizeof path, "/proc/self/task/%d/children", (int)getpid());
  FILE *list = fopen(path, "re");
  int pid;
  while (list && fscanf(list, "%d", &pid) == 1) {
    if (is_live(pid)) continue;
    napi_value value;
    napi_create_int32(env, pid, &value);
    napi_set_element(env, result, count++, value);
  }
  if (list) fclose(list);
  return result;
}

/** livePids() → the pids of every script started and not reaped yet, in this process. */
static napi_value live_pids_now(napi_env env, napi_callback_info info) {
  (void)info;
  napi_value result;
  napi_create_array(env, &result);
  pthread_mutex_lock(&live_lock);
  for (size_t i = 0; i < live_count; i++) {
    napi_value value;
    napi_create_int32(env, live_pids[i], &value);
    napi_set_element(env, result, (uint32_t)i, value);
  }
  pthread_mutex_unlock(&live_lock);
  return result;
}

/** reap(pid) → true when the child was reaped (or is not ours), false while it runs. For adopted orphans. */
static napi_value reap(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value arg, result;
  napi_get_cb_info(env, info, &argc, &arg, NULL, NULL);
  int32_t pid = 0;
  napi_get_value_int32(env, arg, &pid);
  pid_t reaped;
  do reaped = waitpid(pid, NULL, WNOHANG);
  while (reaped < 0 && errno == EINTR);
  napi_get_boolean(env, reaped != 0, &result);
  return result;
}

/** check(): throws when this kernel lacks what the spawn needs: pidfd_open (Linux 5.3) and close_range (5.9). */
static napi_value check(napi_env env, napi_callback_info info) {
  (void)info;
  int pidfd = (int)syscall(SYS_pidfd_open, getpid(), 0);
  if (pidfd < 0) {
    throw_errno(env, "cgi: pidfd_open", errno);
    return NULL;
  }
  close(pidfd);
  // The child closes every descriptor above 2 with close_range (Linux 5.9): an empty range tests it.
  if (close_range(~0U, ~0U, 0) < 0) throw_errno(env, "cgi: close_range", errno);
  return NULL;
}

NAPI_MODULE_INIT() {
  napi_property_descriptor methods[] = {
      {"setEventHandler", NULL, set_event_handler, NULL, NULL, NULL, napi_default, NULL},
      {"spawn", NULL, spawn_script, NULL, NULL, NULL, napi_default, NULL},
      {"pause", NULL, pause_stdout, NULL, NULL, NULL, napi_default, NULL},
      {"resume", NULL, resume_stdout, NULL, NULL, NULL, napi_default, NULL},
      {"closeStdout", NULL, close_stdout, NULL, NULL, NULL, napi_default, NULL},
      {"signalScript", NULL, signal_script, NULL, NULL, NULL, napi_default, NULL},
      {"setSubreaper", NULL, set_subreaper, NULL, NULL, NULL, napi_default, NULL},
      {"reap", NULL, reap, NULL, NULL, NULL, napi_default, NULL},
      {"otherChildren", NULL, other_children, NULL, NULL, NULL, napi_default, NULL},
      {"livePids", NULL, live_pids_now, NULL, NULL, NULL, napi_default, NULL},
      {"forgetDispositions", NULL, forget_dispositions, NULL, NULL, NULL, napi_default, NULL},
      {"check", NULL, check, NULL, NULL, NULL, napi_default, NULL},
  };
  napi_define_properties(env, exports, sizeof methods / sizeof methods[0], methods);
  // waitsForExec: whether spawn() holds its thread until the script has called execve (CLONE_VFORK,
  // see run_spawn); only then is a spawn worth handing to a worker thread (inThread).
  napi_value waits;
#ifdef SPAWN_WITHOUT_WAITING
  napi_get_boolean(env, false, &waits);
#else
  napi_get_boolean(env, true, &waits);
#endif
  napi_set_named_property(env, exports, "waitsForExec", waits);
  return exports;
}
