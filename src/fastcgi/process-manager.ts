// Runs fcgi/ apps as persistent responder processes, as Apache's mod_fcgid does: started on first use, each handed a listening socket as fd 0, restarted with backoff when they crash, stopped gracefully.
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { logError, logInfo } from '../log.ts';
import { FastCGIClient, FastCGIUpstreamError, type FastCGIClientOptions } from './client.ts';

export interface ProcessManagerOptions {
  /** Processes per app (`--fcgi-procs`). */
  procs: number;
  /** How long a new process may take to answer GET_VALUES. Default 20 s. */
  startTimeoutMs?: number;
  /** How long a graceful stop waits for in-flight requests before SIGKILL. Default 10 s. */
  shutdownMs?: number;
  /** First restart delay after a crash; doubled on each crash in a row, up to maxBackoffMs. Default 100 ms. */
  backoffMs?: number;
  maxBackoffMs?: number;
  /** Settings for the client that talks to each process. */
  client?: Partial<Omit<FastCGIClientOptions, 'address' | 'name'>>;
  /** Extra flags for `cgi-runner fcgi` (e.g. --max-reqs). */
  args?: readonly string[];
}

const cliPath = path.join(path.dirname(fileURLToPath(import.meta.url)), '../cli.ts');

/** The tsx loader as an absolute URL, so the child finds it whatever its working directory. */
function tsxLoader(): string {
  try {
    return import.meta.resolve('tsx');
  } catch {
    return 'tsx';
  }
}

/**
 * Children live in their own process groups, so a Ctrl-C to the terminal reaches only the runner,
 * which then stops them in order. Should the runner die anyway, they are killed on its exit, or
 * (for SIGKILL) see their IPC channel close and stop themselves.
 */
const liveChildren = new Set<ChildProcess>();
let exitHook = false;
function track(child: ChildProcess): void {
  liveChildren.add(child);
  child.once('exit', () => liveChildren.delete(child));
  if (exitHook) return;
  exitHook = true;
  process.once('exit', () => {
    for (const c of liveChildren) {
      try {
        process.kill(-c.pid!, 'SIGKILL');
      } catch {
        // already gone
      }
    }
  });
}

/** The apps of one directory: one pool of processes per app file, created on first use. */
export class ProcessManager {
  private readonly pools = new Map<string, AppPool>();
  private runtimeDir: string | null = null;
  private stopping = false;
  readonly settings: Required<Omit<ProcessManagerOptions, 'client' | 'args'>> & Pick<ProcessManagerOptions, 'client' | 'args'>;

  constructor(options: ProcessManagerOptions) {
    this.settings = {
      procs: Math.max(1, options.procs),
      startTimeoutMs: options.startTimeoutMs ?? 20_000,
      shutdownMs: options.shutdownMs ?? 10_000,
      backoffMs: options.backoffMs ?? 100,
      maxBackoffMs: options.maxBackoffMs ?? 10_000,
      client: options.client,
      args: options.args,
    };
  }

  /** @internal a private directory (0700) for the sockets, removed on stop and on exit. */
  socketDir(): string {
    // Made again when it has gone (a tmp cleaner): a restart must not fail for good.
    if (!this.runtimeDir || !fs.existsSync(this.runtimeDir)) {
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cgi-runner-fcgi-'));
      this.runtimeDir = dir;
      process.once('exit', () => fs.rmSync(dir, { recursive: true, force: true }));
    }
    return this.runtimeDir;
  }

  /** The pool for an app file (absolute path), named `name` in logs, e.g. "fcgi/hello". */
  pool(file: string, name: string): AppPool {
    let pool = this.pools.get(file);
    if (!pool) {
      pool = new AppPool(this, file, name, this.pools.size);
      this.pools.set(file, pool);
    }
    return pool;
  }

  /** A client for one of the app's processes, starting them on first use. Rejects with a 503 FastCGIUpstreamError. */
  client(file: string, name: string): Promise<FastCGIClient> {
    if (this.stopping) return Promise.reject(new FastCGIUpstreamError(503, `fastcgi: ${name}: the server is stopping`, name));
    return this.pool(file, name).pick();
  }

  /** Pids of the processes of each app that are ready for requests, by name. */
  pids(): Record<string, number[]> {
    const out: Record<string, number[]> = {};
    for (const pool of this.pools.values()) out[pool.name] = pool.pids();
    return out;
  }

  /** SIGTERM to every process (each finishes its in-flight requests), SIGKILL after the deadline. */
  async stop(deadlineMs = this.settings.shutdownMs): Promise<void> {
    this.stopping = true;
    await Promise.all([...this.pools.values()].map((pool) => pool.stop(deadlineMs)));
    if (this.runtimeDir) fs.rmSync(this.runtimeDir, { recursive: true, force: true });
  }
}

interface Waiter {
  resolve: (client: FastCGIClient) => void;
  reject: (error: FastCGIUpstreamError) => void;
  timer: NodeJS.Timeout;
}

/** The processes of one app and the requests waiting for one of them to be ready. */
class AppPool {
  private readonly slots: AppProcess[] = [];
  private waiters: Waiter[] = [];
  private stopped = false;

  constructor(
    readonly manager: ProcessManager,
    readonly file: string,
    readonly name: string,
    readonly index: number,
  ) {}

  pick(): Promise<FastCGIClient> {
    if (this.stopped) return Promise.reject(new FastCGIUpstreamError(503, `fastcgi: ${this.name}: the server is stopping`, this.name));
    if (this.slots.length === 0) {
      for (let i = 0; i < this.manager.settings.procs; i++) this.slots.push(new AppProcess(this, i));
    }
    // The least busy ready process.
    let best: AppProcess | null = null;
    for (const slot of this.slots) {
      if (slot.state === 'ready' && (!best || slot.client!.inFlight < best.client!.inFlight)) best = slot;
    }
    if (best) return Promise.resolve(best.client!);
    // None ready: start those that are not starting; a broken app answers 503 with its last failure.
    let starting = false;
    let failure: string | null = null;
    for (const slot of this.slots) {
      if (slot.state === 'idle') slot.start();
      else if (slot.state === 'failed') {
        if (slot.retryAllowed()) slot.start();
        else failure ??= slot.failure;
      }
      if (slot.state === 'starting' || slot.state === 'backoff' || slot.state === 'dying') starting = true;
    }
    if (!starting) return Promise.reject(this.unavailable(failure ?? 'no process is running'));
    return new Promise((resolve, reject) => {
      const waiter: Waiter = {
        resolve,
        reject,
        timer: setTimeout(() => {
          this.waiters = this.waiters.filter((w) => w !== waiter);
          reject(this.unavailable(`no process ready within ${this.manager.settings.startTimeoutMs / 1000} s`));
        }, this.manager.settings.startTimeoutMs),
      };
      this.waiters.push(waiter);
    });
  }

  unavailable(reason: string): FastCGIUpstreamError {
    const message = `fastcgi: ${this.name}: unavailable: ${reason}`;
    logError(message, { upstream: this.name });
    return new FastCGIUpstreamError(503, message, this.name);
  }

  /** @internal a process is ready: it takes the waiting requests. */
  ready(slot: AppProcess): void {
    const waiters = this.waiters;
    this.waiters = [];
    for (const waiter of waiters) {
      clearTimeout(waiter.timer);
      waiter.resolve(slot.client!);
    }
  }

  /** @internal a start failed: if no other process may still come up, the waiting requests get 503 and the reason. */
  startFailed(reason: string): void {
    if (this.slots.some((slot) => slot.state === 'starting' || slot.state === 'ready' || slot.state === 'backoff' || slot.state === 'dying')) return;
    const waiters = this.waiters;
    this.waiters = [];
    if (waiters.length === 0) return;
    const error = this.unavailable(reason);
    for (const waiter of waiters) {
      clearTimeout(waiter.timer);
      waiter.reject(error);
    }
  }

  pids(): number[] {
    return this.slots.filter((slot) => slot.state === 'ready').map((slot) => slot.pid!);
  }

  async stop(deadlineMs: number): Promise<void> {
    this.stopped = true;
    for (const waiter of this.waiters) {
      clearTimeout(waiter.timer);
      waiter.reject(new FastCGIUpstreamError(503, `fastcgi: ${this.name}: the server is stopping`, this.name));
    }
    this.waiters = [];
    await Promise.all(this.slots.map((slot) => slot.stop(deadlineMs)));
  }
}

/** 'dying': its socket refuses connections, so it is dead; its exit has not been seen yet. */
type ProcessState = 'idle' | 'starting' | 'ready' | 'dying' | 'backoff' | 'failed' | 'stopping' | 'stopped';

/** One process slot: its child, the socket it was handed, and the client that talks to it. */
class AppProcess {
  state: ProcessState = 'idle';
  client: FastCGIClient | null = null;
  failure: string | null = null;
  private child: ChildProcess | null = null;
  private backoff: number;
  private failedAt = 0;
  private startedAt = 0;
  private restartTimer: NodeJS.Timeout | null = null;
  private output: string[] = [];
  private exited: Promise<void> = Promise.resolve();

  constructor(
    private readonly pool: AppPool,
    private readonly index: number,
  ) {
    this.backoff = pool.manager.settings.backoffMs;
  }

  get pid(): number | undefined {
    return this.child?.pid;
  }

  private get label(): string {
    return `${this.pool.name}[${this.child?.pid ?? '-'}]`;
  }

  /** After a failed start, the next request tries again only once the backoff has passed. */
  retryAllowed(): boolean {
    return performance.now() - this.failedAt >= this.backoff;
  }

  start(): void {
    this.state = 'starting';
    this.failure = null;
    this.output = [];
    const settings = this.pool.manager.settings;
    let socketPath: string;
    let fd: number;
    let server: net.Server;
    try {
      const dir = this.pool.manager.socketDir();
      socketPath = path.join(dir, `app${this.pool.index}-${this.index}.sock`);
      fs.rmSync(socketPath, { force: true });
      ({ server, fd } = listenForChild(dir));
    } catch (err) {
      return this.startFailed(`cannot create its socket: ${(err as Error).message}`);
    }
    let child: ChildProcess;
    try {
      // §2.2: the listening socket is the child's fd 0 (FCGI_LISTENSOCK_FILENO), as mod_fcgid hands it.
      child = spawn(
        process.execPath,
        ['--import', tsxLoader(), cliPath, 'fcgi', '--app', this.pool.file, '--no-access-log', '--shutdown-timeout', String(Math.ceil(settings.shutdownMs / 1000)), ...(settings.args ?? [])],
        { stdio: [fd, 'pipe', 'pipe', 'ipc'], detached: true, env: process.env },
      );
    } catch (err) {
      server.close();
      return this.startFailed(`cannot start: ${(err as Error).message}`);
    }
    // The socket keeps its name under the final path; closing our copy removes only the temporary one.
    try {
      fs.renameSync(server.address() as string, socketPath);
    } catch (err) {
      server.close();
      child.kill('SIGKILL');
      return this.startFailed(`cannot name its socket: ${(err as Error).message}`);
    }
    server.close();
    this.child = child;
    this.startedAt = performance.now();
    track(child);
    this.forwardOutput(child);
    const exitSignal = new AbortController();
    this.exited = new Promise((resolve) => {
      child.once('exit', (code, signal) => {
        exitSignal.abort();
        this.onExit(code, signal);
        resolve();
      });
    });
    child.once('error', (err) => logError(`fastcgi: ${this.label}: ${err.message}`));
    child.on('message', () => {});

    const client: FastCGIClient = new FastCGIClient({
      ...settings.client,
      address: { kind: 'unix', path: socketPath },
      name: `${this.pool.name} (pid ${child.pid})`,
      multiplex: 'auto',
      onConnectError: (err) => {
        // Only the child holds this socket: a refused connection means it is dead (its exit
        // event may lag), so requests wait for its replacement instead of being sent to it.
        if (err.code === 'ECONNREFUSED' && this.state === 'ready' && this.client === client) this.state = 'dying';
      },
    });
    this.client = client;
    // Ready when it answers GET_VALUES: its socket accepted from the start, so this waits for the app to load.
    const probeStarted = performance.now();
    client.probe({ timeoutMs: settings.startTimeoutMs, signal: exitSignal.signal }).then(
      async (values) => {
        if (this.state !== 'starting' || this.child !== child) return;
        if (!values) {
          const timedOut = performance.now() - probeStarted >= settings.startTimeoutMs;
          // Closed without an answer: the child is most likely exiting, and its exit (with what it
          // printed) is the better reason; give that a moment to arrive.
          if (!timedOut) await Promise.race([this.exited, new Promise((resolve) => setTimeout(resolve, 1000))]);
          if (this.state !== 'starting' || this.child !== child) return; // onExit reported it
          this.startFailed(timedOut ? `did not answer GET_VALUES within ${settings.startTimeoutMs / 1000} s` : 'closed the connection without answering GET_VALUES');
          this.kill('SIGKILL');
          return;
        }
        this.state = 'ready';
        logInfo(`fastcgi: ${this.label}: ready on ${socketPath}`);
        this.pool.ready(this);
      },
      (err: Error) => {
        if (this.state === 'starting' && this.child === child) {
          this.startFailed(err.message);
          this.kill('SIGKILL');
        }
      },
    ).catch((err: unknown) => logError(`fastcgi: ${this.label}: ${(err as Error)?.stack ?? String(err)}`));
  }

  private forwardOutput(child: ChildProcess): void {
    const label = this.label;
    for (const stream of [child.stdout!, child.stderr!]) {
      let tail = '';
      stream.setEncoding('utf8');
      stream.on('data', (chunk: string) => {
        const lines = (tail + chunk).split('\n');
        tail = lines.pop()!;
        for (const line of lines) this.line(label, line);
      });
      stream.on('end', () => {
        if (tail) this.line(label, tail);
      });
    }
  }

  private line(label: string, line: string): void {
    this.output.push(line);
    if (this.output.length > 20) this.output.shift();
    process.stderr.write(`${label}: ${line}\n`);
  }

  private startFailed(reason: string): void {
    this.failure = reason;
    this.failedAt = performance.now();
    this.state = 'failed';
    this.client?.close();
    this.client = null;
    this.backoff = Math.min(this.backoff * 2, this.pool.manager.settings.maxBackoffMs);
    this.pool.startFailed(reason);
  }

  private onExit(code: number | null, signal: NodeJS.Signals | null): void {
    const how = signal ? `killed by ${signal}` : `exit status ${code}`;
    const state = this.state;
    // Requests in flight on it see their connection close: the client answers them 502.
    this.client?.close();
    this.client = null;
    this.child = null;
    if (state === 'stopping' || state === 'stopped') {
      this.state = 'stopped';
      return;
    }
    if (state === 'starting') {
      // The app's own words say why (a syntax error, a missing module), not just its exit status.
      const said = this.output.filter((l) => l.trim()).slice(-3).join(' | ');
      this.startFailed(`the process ended before it was ready (${how})${said ? `: ${said}` : ''}`);
      return;
    }
    if (state === 'failed') return;
    // A process that ran a while is back to the short delay; one that keeps crashing waits longer.
    const settings = this.pool.manager.settings;
    if (performance.now() - this.startedAt > 10_000) this.backoff = settings.backoffMs;
    const delay = this.backoff;
    this.backoff = Math.min(this.backoff * 2, settings.maxBackoffMs);
    logError(`fastcgi: ${this.pool.name}: process ${how}; restarting in ${delay} ms`, { upstream: this.pool.name });
    this.state = 'backoff';
    this.restartTimer = setTimeout(() => {
      this.restartTimer = null;
      if (this.state === 'backoff') this.start();
    }, delay);
  }

  private kill(signal: NodeJS.Signals): void {
    const pid = this.child?.pid;
    if (!pid) return;
    try {
      process.kill(-pid, signal);
    } catch {
      // already gone
    }
  }

  async stop(deadlineMs: number): Promise<void> {
    if (this.restartTimer) clearTimeout(this.restartTimer);
    if (!this.child) {
      this.state = 'stopped';
      return;
    }
    this.state = 'stopping';
    // The responder's graceful stop: stop accepting, finish what is in flight, exit 0.
    this.kill('SIGTERM');
    const timer = setTimeout(() => this.kill('SIGKILL'), deadlineMs + 1000);
    await this.exited;
    clearTimeout(timer);
  }
}

/**
 * A listening unix socket for a child, and its descriptor. It is bound to a temporary name: libuv
 * unlinks a listening socket's path when the handle closes, so the caller renames it to the final
 * path before closing the runner's copy, and the child's copy keeps listening under that name.
 */
function listenForChild(dir: string): { server: net.Server; fd: number } {
  const temporary = path.join(dir, `.${process.pid}-${Math.random().toString(36).slice(2)}.sock`);
  const server = net.createServer();
  // A failed bind is also emitted, a tick later: the missing descriptor below reports it.
  server.on('error', () => {});
  // listen() on a path binds synchronously in libuv; only the callback is deferred.
  server.listen({ path: temporary, backlog: 511 });
  const fd = (server as unknown as { _handle?: { fd?: number } })._handle?.fd;
  if (typeof fd !== 'number' || fd < 0) {
    server.close();
    throw new Error('this Node cannot hand a listening socket to a child (no descriptor)');
  }
  fs.chmodSync(temporary, 0o600);
  return { server, fd };
}
