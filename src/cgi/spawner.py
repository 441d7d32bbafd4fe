#!/usr/bin/env python3
"""The spawner helper behind src/cgi/spawner.ts: a small long-lived process that starts CGI scripts
with posix_spawn and relays their stdin, stdout and stderr over its own stdio, so the large Node
process never forks and never opens a file descriptor per request.

Why: fork() copies the page tables of the forking process, and every page either side writes
afterwards faults. For the runner's Node process that costs more than the script itself. glibc's
posix_spawn uses clone(CLONE_VM | CLONE_VFORK): no copy at all.

Protocol. Both directions carry frames: a 1-byte type, a 4-byte big-endian script id, a 4-byte
big-endian length, then that many payload bytes.
  From the runner (our stdin):
    R  spawn. Payload: NUL-separated flags ("b": the script gets a stdin pipe, else /dev/null),
       cwd, file, argc, argv..., then NAME=VALUE pairs: the whole environment.
    I  bytes for the script's stdin.           D  end of the script's stdin.
    A  the runner consumed this many (decimal) stdout bytes: the read window reopens.
    K  send this signal (decimal) to the script's process group.
  To the runner (our stdout):
    O  stdout bytes.   Z  stdout closed.   E  stderr bytes.
    W  this many (decimal) stdin bytes reached the script's pipe: send more.
    C  the script's stdin is closed (it exited or closed it): send no more.
    X  exited. Payload: "pid wait-status group-left" (group-left 1: other members of its process
       group are still running).
    F  could not start. Payload: the reason.
  EOF on our stdin means the runner is gone: every script's process group is killed, then we exit.

Orphans. We are a child subreaper, so a process a script leaves behind outside its process group (a
daemon's double fork and setsid) becomes our child when its parent exits. Shortly after scripts
exit we look at our children: one that is not a script of ours, and that no running script is old
enough to have started, belongs to a finished request. It gets SIGTERM, then SIGKILL.
"""
import fcntl
import os
import selectors
import signal
import struct
import sys
import time

HEADER = struct.Struct('>cII')
F_SETPIPE_SZ = getattr(fcntl, 'F_SETPIPE_SZ', 1031 if sys.platform.startswith('linux') else 0)
STDOUT_WINDOW = 1024 * 1024  # stdout bytes relayed per script before the runner must acknowledge
READ_SIZE = 256 * 1024
PIPE_SIZE = 256 * 1024  # a larger stdout pipe: fewer, larger reads for scripts that write a lot


class Script:
    __slots__ = ('id', 'pid', 'out_fd', 'err_fd', 'in_fd', 'in_buf', 'in_eof', 'unacked', 'reading', 'exited')

    def __init__(self, sid):
        self.id = sid
        self.pid = 0
        self.out_fd = self.err_fd = self.in_fd = -1
        self.in_buf = bytearray()
        self.in_eof = False
        self.unacked = 0
        self.reading = False
        self.exited = False


scripts = {}  # id -> Script
by_pid = {}  # pid -> Script
out = []  # frames for the runner (headers and payloads), written with one writev per turn of the loop
sel = selectors.DefaultSelector()
devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
# Dispositions set to "ignore" survive exec (Python ignores SIGPIPE and SIGXFSZ, we ignore SIGINT):
# the scripts get them back at their defaults. Handled signals are reset by exec itself.
reset_signals = set()
child_exited = False
SWEEP_DELAY = 0.2  # seconds after a script exits before we look for its orphans
ORPHAN_GRACE = 2.0  # seconds between SIGTERM and SIGKILL for an orphan
sweep_at = None  # monotonic time of the next look for orphans, or None
orphans_termed = {}  # pid -> monotonic time it got SIGTERM


def emit(kind, sid, payload=b''):
    out.append(HEADER.pack(kind, sid, len(payload)))
    if payload:
        out.append(payload)


def flush():
    # Blocking writes: the runner always reads this pipe, so this only waits for its event loop.
    # writev sends headers and payloads as they are, without copying them into one buffer.
    global out
    buffers = out
    out = []
    while buffers:
        try:
            n = os.writev(1, buffers[:512])
        except InterruptedError:
            continue
        except BrokenPipeError:
            shutdown()
        while n > 0:
            first = buffers[0]
            if n >= len(first):
                n -= len(first)
                buffers.pop(0)
            else:
                buffers[0] = first[n:]
                n = 0


def close_fd(fd):
    if fd >= 0:
        try:
            sel.unregister(fd)
        except (KeyError, ValueError):
            pass
        os.close(fd)
    return -1


def maybe_forget(s):
    if s.exited and s.out_fd < 0 and s.err_fd < 0 and s.in_fd < 0:
        scripts.pop(s.id, None)


def spawn(sid, payload):
    s = Script(sid)
    fields = payload.split(b'\0')
    try:
        flags, cwd, file, argc = fields[0], fields[1], fields[2], int(fields[3])
    except (IndexError, ValueError):
        emit(b'F', sid, b'malformed spawn request')
        return
    argv = fields[4:4 + argc]
    env = {}
    for pair in fields[4 + argc:]:
        name, eq, value = pair.partition(b'=')
        if eq and name:
            env[name] = value
    out_r, out_w = os.pipe()
    if F_SETPIPE_SZ:
        try:
            fcntl.fcntl(out_r, F_SETPIPE_SZ, PIPE_SIZE)
        except OSError:
            pass
    err_r, err_w = os.pipe()
    in_r = devnull
    in_w = -1
    if b'b' in flags:
        in_r, in_w = os.pipe()
    actions = [(os.POSIX_SPAWN_DUP2, in_r, 0), (os.POSIX_SPAWN_DUP2, out_w, 1), (os.POSIX_SPAWN_DUP2, err_w, 2)]
    try:
        # posix_spawn cannot change directory, so we do, for the child to inherit (RFC 3875 §7.2:
        # the script runs in its own directory). We are single-threaded and use no relative paths.
        os.chdir(cwd)
        # A new session makes the script lead its own process group: one killpg reaches all it starts.
        s.pid = os.posix_spawn(file, argv, env, file_actions=actions, setsid=True, setsigdef=reset_signals, setsigmask=())
    except (OSError, ValueError, NotImplementedError) as e:
        for fd in (out_r, out_w, err_r, err_w, in_w):
            if fd >= 0:
                os.close(fd)
        if in_r != devnull:
            os.close(in_r)
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        emit(b'F', sid, ('cannot execute %s: %s' % (os.fsdecode(file), reason)).encode())
        return
    os.close(out_w)
    os.close(err_w)
    if in_r != devnull:
        os.close(in_r)
    for fd in (out_r, err_r, in_w):
        if fd >= 0:
            os.set_blocking(fd, False)
    s.out_fd, s.err_fd, s.in_fd = out_r, err_r, in_w
    scripts[sid] = s
    by_pid[s.pid] = s
    sel.register(out_r, selectors.EVENT_READ, (on_stdout, s))
    s.reading = True
    sel.register(err_r, selectors.EVENT_READ, (on_stderr, s))


# Each callback first checks that its descriptor is still open: an earlier callback of the same
# turn may have closed it (select() reported both events at once).
def on_stdout(s, _mask):
    if s.out_fd < 0 or not s.reading:
        return
    want = min(READ_SIZE, STDOUT_WINDOW - s.unacked)
    try:
        data = os.read(s.out_fd, want)
    except BlockingIOError:
        return
    except OSError:
        data = b''
    if not data:
        s.out_fd = close_fd(s.out_fd)
        emit(b'Z', s.id)
        maybe_forget(s)
        return
    s.unacked += len(data)
    emit(b'O', s.id, data)
    if s.unacked >= STDOUT_WINDOW:
        # The runner has not passed on what it has: stop reading, so the script blocks on its pipe.
        sel.unregister(s.out_fd)
        s.reading = False


def on_stderr(s, _mask):
    if s.err_fd < 0:
        return
    try:
        data = os.read(s.err_fd, READ_SIZE)
    except BlockingIOError:
        return
    except OSError:
        data = b''
    if not data:
        s.err_fd = close_fd(s.err_fd)
        maybe_forget(s)
        return
    emit(b'E', s.id, data)


def stdin_closed(s):
    s.in_fd = close_fd(s.in_fd)
    s.in_buf = bytearray()
    emit(b'C', s.id)
    maybe_forget(s)


def write_stdin(s):
    written = 0
    while s.in_buf:
        try:
            n = os.write(s.in_fd, s.in_buf)
        except BlockingIOError:
            break
        except InterruptedError:
            continue
        except OSError:
            # EPIPE: the script closed its stdin or exited. What it did not read is dropped.
            stdin_closed(s)
            return
        del s.in_buf[:n]
        written += n
    if written:
        emit(b'W', s.id, str(written).encode())
    if s.in_buf:
        events = selectors.EVENT_WRITE
        try:
            sel.modify(s.in_fd, events, (on_stdin, s))
        except KeyError:
            sel.register(s.in_fd, events, (on_stdin, s))
    else:
        try:
            sel.unregister(s.in_fd)
        except (KeyError, ValueError):
            pass
        if s.in_eof:
            s.in_fd = close_fd(s.in_fd)
            maybe_forget(s)


def on_stdin(s, _mask):
    if s.in_fd >= 0:
        write_stdin(s)


ctl_buf = bytearray()


def on_control(_s, _mask):
    try:
        data = os.read(0, 256 * 1024)
    except BlockingIOError:
        return
    if not data:
        shutdown()
    ctl_buf.extend(data)
    pos = 0
    size = len(ctl_buf)
    while size - pos >= HEADER.size:
        kind, sid, length = HEADER.unpack_from(ctl_buf, pos)
        end = pos + HEADER.size + length
        if end > size:
            break
        payload = bytes(ctl_buf[pos + HEADER.size:end])
        pos = end
        dispatch(kind, sid, payload)
    del ctl_buf[:pos]


def dispatch(kind, sid, payload):
    if kind == b'R':
        spawn(sid, payload)
        return
    s = scripts.get(sid)
    if s is None:
        return
    if kind == b'I':
        if s.in_fd >= 0:
            s.in_buf.extend(payload)
            if len(s.in_buf) == len(payload):
                write_stdin(s)
    elif kind == b'D':
        s.in_eof = True
        if s.in_fd >= 0 and not s.in_buf:
            s.in_fd = close_fd(s.in_fd)
            maybe_forget(s)
    elif kind == b'A':
        s.unacked -= int(payload)
        if not s.reading and s.out_fd >= 0 and s.unacked < STDOUT_WINDOW:
            sel.register(s.out_fd, selectors.EVENT_READ, (on_stdout, s))
            s.reading = True
    elif kind == b'K':
        if not s.exited:
            try:
                os.killpg(s.pid, int(payload))
            except OSError:
                pass


def group_alive(pgid):
    try:
        os.killpg(pgid, 0)
        return True
    except PermissionError:
        return True
    except OSError:
        return False


def reap():
    done = []
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            break
        s = by_pid.pop(pid, None)
        if s is not None:
            done.append((s, status))
    if done:
        schedule_sweep()
    # Checked once everything reapable is reaped, so this round's zombies do not count as members.
    for s, status in done:
        s.exited = True
        if s.in_fd >= 0:
            stdin_closed(s)
        emit(b'X', s.id, ('%d %d %d' % (s.pid, status, 1 if group_alive(s.pid) else 0)).encode())
        maybe_forget(s)


def schedule_sweep(delay=SWEEP_DELAY):
    global sweep_at
    at = time.monotonic() + delay
    if sweep_at is None or at < sweep_at:
        sweep_at = at


def start_time(pid):
    """When the process started, in clock ticks since boot (field 22 of /proc/PID/stat), or None."""
    try:
        with open('/proc/%d/stat' % pid, 'rb') as f:
            stat = f.read()
        return int(stat[stat.rfind(b')') + 2:].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def our_children():
    """Our children, from the kernel's list for our only thread; the whole of /proc where there is none."""
    try:
        with open('/proc/self/task/%d/children' % os.getpid(), 'rb') as f:
            return [int(pid) for pid in f.read().split()]
    except (OSError, ValueError):
        return adopted()


def sweep():
    """TERM, then KILL, the orphans of finished scripts (see the module's docstring)."""
    global sweep_at
    sweep_at = None
    now = time.monotonic()
    children = [pid for pid in our_children() if pid not in by_pid]
    for pid in list(orphans_termed):
        if pid not in children:
            del orphans_termed[pid]
    if not children:
        return
    # A script still running may have started an orphan it will wait for: spare the orphans that
    # started after the oldest running script (a tick's tie included), and look again later.
    running = [t for t in (start_time(s.pid) for s in by_pid.values()) if t is not None]
    oldest_running = min(running) if running else None
    for pid in children:
        if pid in orphans_termed:
            if now - orphans_termed[pid] >= ORPHAN_GRACE:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            continue
        started = start_time(pid)
        if started is None or (oldest_running is not None and started >= oldest_running):
            continue
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError:
            continue
        orphans_termed[pid] = now
    # Orphans remain (waiting for their SIGKILL, or spared for now): look again.
    schedule_sweep()


def on_wakeup(_s, _mask):
    global child_exited
    child_exited = True
    try:
        while os.read(wake_r, 512):
            pass
    except BlockingIOError:
        pass


def adopted():
    """Processes whose parent is us: scripts, and the orphans we adopted as subreaper."""
    me = os.getpid()
    pids = []
    try:
        entries = os.listdir('/proc')
    except OSError:
        return pids
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open('/proc/%s/stat' % entry, 'rb') as f:
                stat = f.read()
        except OSError:
            continue
        rest = stat[stat.rfind(b')') + 2:].split()
        if len(rest) > 1 and int(rest[1]) == me and rest[0] != b'Z':
            pids.append(int(entry))
    return pids


def shutdown(*_args):
    """The runner is gone: TERM every script's group and every adopted orphan, then KILL what is left."""
    import time
    groups = [s.pid for s in scripts.values() if s.pid]
    def signal_all(sig):
        for pgid in groups:
            try:
                os.killpg(pgid, sig)
            except OSError:
                pass
        for pid in adopted():
            try:
                os.kill(pid, sig)
            except OSError:
                pass
    signal_all(signal.SIGTERM)
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        try:
            while os.waitpid(-1, os.WNOHANG)[0] > 0:
                pass
        except ChildProcessError:
            pass
        if not any(group_alive(g) for g in groups) and not adopted():
            break
        time.sleep(0.02)
    signal_all(signal.SIGKILL)
    try:
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass
    except ChildProcessError:
        pass
    os._exit(0)


def become_subreaper():
    # Orphans of scripts that daemonize are re-parented to us, so we reap them (no zombies) and
    # find them at shutdown (no orphans). prctl(PR_SET_CHILD_SUBREAPER, 1).
    if not sys.platform.startswith('linux'):
        return
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)
    except Exception:
        pass


if __name__ == '__main__':
    if sys.version_info < (3, 8):
        sys.stderr.write('cgi: spawner: Python 3.8 or later is required\n')
        sys.exit(2)
    become_subreaper()
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    # The C-level handler writes to wake_w the moment SIGCHLD arrives, so select() cannot miss it.
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.signal(signal.SIGTERM, shutdown)
    # A terminal's Ctrl-C goes to the runner, which stops us by closing our stdin.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    reset_signals.update(s for s in signal.valid_signals() if s not in (signal.SIGKILL, signal.SIGSTOP) and signal.getsignal(s) == signal.SIG_IGN)
    os.set_blocking(0, False)
    sel.register(0, selectors.EVENT_READ, (on_control, None))
    sel.register(wake_r, selectors.EVENT_READ, (on_wakeup, None))
    emit(b'R', 0)
    while True:
        if out:
            flush()
        timeout = None if sweep_at is None else max(0.0, sweep_at - time.monotonic())
        for key, mask in sel.select(timeout):
            callback, s = key.data
            try:
                callback(s, mask)
            except SystemExit:
                raise
            except Exception as e:  # a bug must cost one request, not every script
                sys.stderr.write('cgi: spawner: %s: %r\n' % (callback.__name__, e))
                if s is not None:
                    for fd in (s.out_fd, s.err_fd, s.in_fd):
                        if fd >= 0:
                            close_fd(fd)
                    s.out_fd = s.err_fd = s.in_fd = -1
                    emit(b'Z', s.id)
                    emit(b'C', s.id)
                    if s.pid:
                        try:
                            os.killpg(s.pid, signal.SIGKILL)
                        except OSError:
                            pass
        if child_exited:
            child_exited = False
            reap()
        if sweep_at is not None and time.monotonic() >= sweep_at:
            try:
                sweep()
            except Exception as e:  # a bug here must not stop the scripts
                sys.stderr.write('cgi: spawner: sweep: %r\n' % (e,))
