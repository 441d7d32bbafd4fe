// Starts CGI script processes, each in its own process group: from the runner itself through the native addon when it is built, else through the long-lived spawner helper (spawner.py) when Python is available, else with child_process.spawn.
import { spawn as spawnChild, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Readable, Writable } from 'node:stream';
import { logError } from '../log.ts';
import { loadSpawnAddon, NativeSpawner } from './native-spawner.ts';

import { endScripts, exitFromWaitStatus, groupAlive, signalGroup, StreamedStdout, type ScriptExit, type ScriptProcess, type SpawnRequest, type Spawner, type SpawnerKind } from './script-process.ts';

export type { ScriptExit, ScriptProcess, Spawner, SpawnerKind } from './script-process.ts';

// ---------------------------------------------------------------------------------------------
// The helpers: Python processes that start scripts with posix_spawn and relay their stdio over the
// helper's own stdin and stdout (protocol in spawner.py). Per request the runner opens no file
// descriptor and makes no syscall of its own: frames ride on one pipe, batched per event-loop turn.

/** Stdout bytes the helper may relay before the runner acknowledges them (matches spawner.py). */
const stdoutWindow = 1024 * 1024;
/** Stdin bytes sent ahead of the helper's confirmation that they reached the script. */
const stdinWindow = 256 * 1024;
const frameHeader = 9;

class HelperProcess extends StreamedStdout implements ScriptProcess {
  pid: number | undefined;
  onStderr: ((chunk: Buffer | null) => void) | null = null;
  readonly exited: Promise<ScriptExit>;
  readonly stdout: Readable;
  readonly stdin: Writable | null;
  private resolveExit!: (exit: ScriptExit) => void;
  done = false;
  stdoutDone = false;
  /** Stdout bytes delivered and not acknowledged yet. */
  private unacked = 0;
  private stdinOutstanding = 0;
  private stdinWaiting: (() => void) | null = null;

  constructor(
    private readonly spawner: HelperSpawner,
    readonly id: number,
    hasStdin: boolean,
  ) {
    super();
    this.exited = new Promise((resolve) => (this.resolveExit = resolve));
    this.stdout = new Readable({
      highWaterMark: 64 * 1024,
      // The consumer wants more: what it took leaves room in the window.
      read: () => this.ack(false),
    });
    this.stdout.on('error', () => {});
    this.stdin = hasStdin
      ? new Writable({
          highWaterMark: 64 * 1024,
          write: (chunk: Buffer, _encoding, callback) => this.writeStdin(chunk, callback),
          final: (callback) => {
            this.spawner.send(0x44 /* D */, this.id);
            callback();
          },
          destroy: (err, callback) => {
            this.stdinWaiting = null;
            if (!this.done) this.spawner.send(0x44 /* D */, this.id);
            callback(err);
          },
        })
      : null;
  }

  private writeStdin(chunk: Buffer, callback: (error?: Error | null) => void): void {
    for (let off = 0; off < chunk.length; off += 64 * 1024) this.spawner.send(0x49 /* I */, this.id, chunk.subarray(off, off + 64 * 1024));
    this.stdinOutstanding += chunk.length;
    if (this.stdinOutstanding < stdinWindow) callback();
    else this.stdinWaiting = () => callback();
  }

  onStdinCredit(bytes: number): void {
    this.stdinOutstanding -= bytes;
    if (this.stdinWaiting && this.stdinOutstanding < stdinWindow) {
      const waiting = this.stdinWaiting;
      this.stdinWaiting = null;
      waiting();
    }
  }

  onStdinClosed(): void {
    // The script will read no more (EPIPE at the helper): the writer learns it as an error.
    const stdin = this.stdin;
    if (stdin && !stdin.destroyed) stdin.destroy(Object.assign(new Error('cgi: the script closed its stdin'), { code: 'EPIPE' }));
  }

  onStdout(data: Buffer): void {
    this.unacked += data.length;
    if (this.stdout.destroyed) {
      // Nobody reads any more, but the script must not block on a full pipe: keep the window open.
      this.ack(true);
      return;
    }
    this.stdout.push(data);
  }

  private ack(force: boolean): void {
    if (this.stdoutDone) return;
    const consumed = this.unacked - this.stdout.readableLength;
    // Batched: one frame per quarter window, unless the helper may be stalled on a full window.
    if (consumed > 0 && (force || consumed >= stdoutWindow / 4 || this.unacked >= stdoutWindow / 2)) {
      this.unacked -= consumed;
      this.spawner.send(0x41 /* A */, this.id, Buffer.from(String(consumed)));
    }
  }

  onStdoutEnd(): void {
    this.stdoutDone = true;
    this.stdout.push(null);
  }

  killGroup(signal: NodeJS.Signals): void {
    if (!this.done) this.spawner.send(0x4b /* K */, this.id, Buffer.from(String(os.constants.signals[signal])));
    else if (this.pid !== undefined) signalGroup(this.pid, signal);
  }

  finish(exit: ScriptExit): void {
    if (this.done) return;
    this.done = true;
    this.resolveExit(exit);
  }
}

const helperScript = path.join(path.dirname(fileURLToPath(import.meta.url)), 'spawner.py');

class HelperSpawner {
  private nextId = 1;
  get pid(): number | undefined {
    return this.child.pid;
  }

  /** Scripts started and not finished; -1 once the helper is gone. */
  get load(): number {
    return this.closed ? -1 : this.running.size;
  }
  private readonly running = new Map<number, HelperProcess>();
  private pending: Buffer[] = [];
  private flushScheduled = false;
  private buffered: Buffer | null = null;
  private closed = false;
  private failure: string | undefined;
  private readonly events: net.Socket;
  private readonly control: net.Socket;

  private constructor(private readonly child: ChildProcess) {
    this.events = child.stdout as net.Socket;
    this.control = child.stdin as net.Socket;
  }

  static async start(): Promise<HelperSpawner> {
    const child = spawnChild('python3', ['-I', '-S', helperScript], {
      // Its own process group: a Ctrl-C on the terminal reaches the runner, which stops the scripts
      // in order; the helper stops when its stdin closes.
      detached: true,
      stdio: ['pipe', 'pipe', 'inherit'],
      env: { PATH: process.env.PATH ?? '/usr/bin:/bin' },
    });
    try {
      await new Promise<void>((resolve, reject) => {
        const onData = (chunk: Buffer) => {
          child.stdout!.off('data', onData);
          child.stdout!.pause();
          if (chunk.length >= frameHeader && chunk[0] === 0x52 /* R */) {
            if (chunk.length > frameHeader) child.stdout!.unshift(chunk.subarray(frameHeader));
            resolve();
          } else {
            reject(new Error('cgi: the spawner helper did not start properly'));
          }
        };
        child.stdout!.on('data', onData);
        child.once('error', (err) => reject(new Error(`cgi: cannot start the spawner helper: ${err.message}`)));
        child.once('exit', (code, signal) => reject(new Error(`cgi: the spawner helper exited at start (${signal ?? `code ${code}`})`)));
      });
    } catch (err) {
      child.kill('SIGKILL');
      throw err;
    }
    child.removeAllListeners('exit');
    child.removeAllListeners('error');
    const spawner = new HelperSpawner(child);
    spawner.events.on('data', (chunk: Buffer) => spawner.onEvents(chunk));
    spawner.events.resume();
    spawner.control.on('error', () => {});
    child.once('exit', (code, signal) => spawner.onHelperExit(`the spawner helper exited (${signal ?? `code ${code}`})`));
    // The helper keeps the runner alive only while scripts run (see spawn() and forget()).
    child.unref();
    spawner.events.unref();
    spawner.control.unref();
    return spawner;
  }

  /** Queues a frame; everything queued during one turn of the event loop goes out in one write. */
  send(type: number, id: number, payload?: Buffer | string): void {
    if (this.closed) return;
    const size = payload === undefined ? 0 : typeof payload === 'string' ? Buffer.byteLength(payload) : payload.length;
    const header = Buffer.allocUnsafe(frameHeader + (typeof payload === 'string' ? size : 0));
    header[0] = type;
    header.writeUInt32BE(id, 1);
    header.writeUInt32BE(size, 5);
    if (typeof payload === 'string') header.write(payload, frameHeader);
    this.pending.push(header);
    if (payload !== undefined && typeof payload !== 'string' && size > 0) this.pending.push(payload);
    if (!this.flushScheduled) {
      this.flushScheduled = true;
      setImmediate(() => this.flush());
    }
  }

  private flush(): void {
    this.flushScheduled = false;
    const frames = this.pending;
    this.pending = [];
    if (this.closed || frames.length === 0) return;
    this.control.write(frames.length === 1 ? frames[0]! : Buffer.concat(frames));
  }

  spawn(request: SpawnRequest): ScriptProcess {
    const id = this.nextId++;
    if (this.nextId > 0xffffffff) this.nextId = 1;
    const proc = new HelperProcess(this, id, request.stdin);
    if (this.closed) {
      proc.onStdoutEnd();
      proc.finish({ code: null, signal: null, groupLeft: false, error: this.failure ?? 'the runner is stopping' });
      return proc;
    }
    let frame = `${request.stdin ? 'b' : ''}\0${request.cwd}\0${request.file}\0${request.argv.length}`;
    for (const arg of request.argv) frame += '\0' + arg;
    for (const name in request.env) frame += `\0${name}=${request.env[name]}`;
    this.send(0x52 /* R */, id, frame);
    if (this.running.size === 0) this.events.ref();
    this.running.set(id, proc);
    return proc;
  }

  private forget(proc: HelperProcess): void {
    if (this.running.delete(proc.id) && this.running.size === 0) this.events.unref();
  }

  private onEvents(chunk: Buffer): void {
    let data = this.buffered ? Buffer.concat([this.buffered, chunk]) : chunk;
    this.buffered = null;
    let pos = 0;
    while (data.length - pos >= frameHeader) {
      const type = data[pos]!;
      const id = data.readUInt32BE(pos + 1);
      const size = data.readUInt32BE(pos + 5);
      const end = pos + frameHeader + size;
      if (end > data.length) break;
      const payload = data.subarray(pos + frameHeader, end);
      pos = end;
      const proc = this.running.get(id);
      if (!proc) continue;
      switch (type) {
        case 0x4f /* O */:
          proc.onStdout(payload);
          break;
        case 0x5a /* Z */:
          proc.onStdoutEnd();
          if (proc.done) this.forget(proc);
          break;
        case 0x45 /* E */:
          proc.onStderr?.(payload);
          break;
        case 0x57 /* W */:
          proc.onStdinCredit(Number(payload.toString('latin1')));
          break;
        case 0x43 /* C */:
          proc.onStdinClosed();
          break;
        case 0x58 /* X */: {
          const [pid, status, left] = payload.toString('latin1').split(' ');
          proc.pid = Number(pid);
          // The script is gone: whatever it did not read of its stdin never will be.
          proc.onStdinClosed();
          proc.onStderr?.(null);
          proc.finish(exitFromWaitStatus(Number(status), left === '1'));
          if (proc.stdoutDone) this.forget(proc);
          break;
        }
        case 0x46 /* F */:
          proc.onStdoutEnd();
          proc.onStdinClosed();
          proc.onStderr?.(null);
          proc.finish({ code: null, signal: null, groupLeft: false, error: payload.toString('utf8') });
          this.forget(proc);
          break;
      }
    }
    if (pos < data.length) this.buffered = data.subarray(pos);
  }

  /** Called when the helper exits on its own (not through close()). */
  onExit: ((reason: string) => void) | null = null;

  private onHelperExit(reason: string): void {
    const unexpected = !this.closed;
    this.failure = reason;
    this.closed = true;
    if (unexpected) logError(`cgi: ${reason}; its scripts failed`, { pid: this.child.pid });
    for (const proc of this.running.values()) {
      if (!proc.stdoutDone) proc.stdout.destroy(new Error(`cgi: ${reason}`));
      proc.onStdinClosed();
      proc.onStderr?.(null);
      proc.finish({ code: null, signal: null, groupLeft: false, error: reason });
    }
    this.running.clear();
    if (unexpected) this.onExit?.(reason);
  }

  async close(): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    this.flush();
    this.closed = true;
    this.failure = 'the runner is stopping';
    const exited = new Promise<void>((resolve) => this.child.once('exit', () => resolve()));
    this.child.ref();
    // EOF on its stdin: the helper kills every script's group (TERM, then KILL) and exits.
    this.control.end();
    await exited;
  }
}

// ---------------------------------------------------------------------------------------------
// The fallback: child_process.spawn from the runner itself. Correct, but every fork copies the page
// tables of a large process and blocks the event loop while it does.

/** Why execve() would refuse this file (ENOEXEC), or undefined. Reads its first bytes. */
function executableFormatError(file: string): string | undefined {
  let fd: number | undefined;
  try {
    fd = fs.openSync(file, 'r');
    const magic = Buffer.alloc(4);
    const n = fs.readSync(fd, magic, 0, 4, 0);
    if ((n >= 2 && magic[0] === 0x23 && magic[1] === 0x21) || (n === 4 && magic.readUInt32BE(0) === 0x7f454c46)) return undefined;
    return `cannot execute ${file}: Exec format error (no "#!" line)`;
  } catch {
    return undefined; // spawn reports it
  } finally {
    if (fd !== undefined) fs.closeSync(fd);
  }
}

class NodeProcess extends StreamedStdout implements ScriptProcess {
  onStderr: ((chunk: Buffer | null) => void) | null = null;
  readonly exited: Promise<ScriptExit>;
  readonly stdout: Readable;
  readonly stdin: Writable | null;

  /** Without a child: a script refused before it started, `refused` saying why. */
  constructor(
    private readonly child: ChildProcess | null,
    refused?: string,
  ) {
    super();
    if (!child) {
      this.stdout = Readable.from([]);
      this.stdin = null;
      this.exited = Promise.resolve({ code: null, signal: null, groupLeft: false, error: refused });
      return;
    }
    this.stdout = child.stdout!;
    this.stdin = child.stdin;
    this.stdin?.on('error', () => {});
    this.stdout.on('error', () => {});
    child.stderr!.on('data', (chunk: Buffer) => this.onStderr?.(chunk));
    child.stderr!.on('end', () => this.onStderr?.(null));
    this.exited = new Promise((resolve) => {
      child.once('error', (err) => {
        this.onStderr?.(null);
        resolve({ code: null, signal: null, groupLeft: false, error: `cannot execute ${child.spawnfile}: ${err.message}` });
      });
      child.once('exit', (code, signal) => {
        resolve({ code, signal, groupLeft: child.pid !== undefined && groupAlive(child.pid) });
      });
    });
  }

  get pid(): number | undefined {
    return this.child?.pid;
  }

  killGroup(signal: NodeJS.Signals): void {
    if (this.child?.pid !== undefined) signalGroup(this.child.pid, signal);
  }
}

class NodeSpawner implements Spawner {
  readonly kind = 'node' as const;
  readonly pids: number[] = [];
  private readonly running = new Set<NodeProcess>();

  spawn(request: SpawnRequest): ScriptProcess {
    // libuv executes with execvp(), which runs a file without "#!" through /bin/sh; execve(), as
    // the helper, Apache and lighttpd use, refuses it (ENOEXEC). Same rule here.
    const refused = executableFormatError(request.file);
    if (refused) return new NodeProcess(null, refused);
    const child = spawnChild(request.file, request.argv.slice(1), {
      argv0: request.argv[0],
      cwd: request.cwd,
      env: request.env,
      // setsid(): the script leads its own process group, so one kill reaches all it starts.
      detached: true,
      stdio: [request.stdin ? 'pipe' : 'ignore', 'pipe', 'pipe'],
    });
    const proc = new NodeProcess(child);
    this.running.add(proc);
    void proc.exited.then(() => this.running.delete(proc));
    return proc;
  }

  async close(): Promise<void> {
    await endScripts([...this.running]);
  }
}

/**
 * Several helpers, one per core: posix_spawn holds its caller until the child has called exec, so
 * one helper starts one script at a time, however many cores wait idle.
 */
class HelperPool implements Spawner {
  readonly kind = 'helper' as const;
  private turn = 0;
  private closing = false;

  constructor(private readonly helpers: HelperSpawner[]) {
    helpers.forEach((helper, i) => this.watch(helper, i));
  }

  /** A helper that dies (killed from outside) is replaced, so the pool keeps its size. */
  private watch(helper: HelperSpawner, index: number, delayMs = 100): void {
    helper.onExit = () => {
      const restart = (delay: number) =>
        setTimeout(() => {
          if (this.closing) return;
          HelperSpawner.start().then(
            (fresh) => {
              if (this.closing) return void fresh.close();
              this.helpers[index] = fresh;
              this.watch(fresh, index);
            },
            (err: Error) => {
              logError(`cgi: cannot restart the spawner helper: ${err.message}`);
              restart(Math.min(delay * 2, 5000));
            },
          );
        }, delay).unref();
      restart(delayMs);
    };
  }

  get pids(): number[] {
    return this.helpers.flatMap((h) => (h.pid === undefined ? [] : [h.pid]));
  }

  spawn(request: SpawnRequest): ScriptProcess {
    // The least busy helper that is still running; ties go round in turn.
    let best: HelperSpawner | undefined;
    const n = this.helpers.length;
    for (let i = 0; i < n; i++) {
      const helper = this.helpers[(this.turn + i) % n]!;
      if (helper.load >= 0 && (!best || helper.load < best.load)) best = helper;
    }
    this.turn = (this.turn + 1) % n;
    return (best ?? this.helpers[0]!).spawn(request);
  }

  async close(): Promise<void> {
    this.closing = true;
    await Promise.all(this.helpers.map((h) => h.close()));
  }
}

/**
 * Starts a spawner. 'auto' starts scripts from the runner itself through the native addon when it is
 * built, else through the Python helpers, else with Node's own spawn; CGI_RUNNER_SPAWNER=native|helper|node
 * overrides 'auto' (for comparisons and tests).
 */
export async function startSpawner(kind: SpawnerKind = 'auto', helpers?: number): Promise<Spawner> {
  const env = process.env.CGI_RUNNER_SPAWNER;
  if (kind === 'auto' && (env === 'native' || env === 'node' || env === 'helper')) kind = env;
  if (kind === 'node') return new NodeSpawner();
  if (kind === 'native' || kind === 'auto') {
    const addon = loadSpawnAddon();
    if (!(addon instanceof Error)) return new NativeSpawner(addon);
    if (kind === 'native') throw addon;
    process.emitWarning(`${addon.message}; starting scripts through the Python helper instead`);
  }
  try {
    const count = Math.max(1, Math.min(helpers ?? os.availableParallelism(), 16));
    const started = await Promise.allSettled(Array.from({ length: count }, () => HelperSpawner.start()));
    const ok = started.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []));
    const failed = started.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) {
      await Promise.all(ok.map((h) => h.close()));
      throw failed.reason;
    }
    return new HelperPool(ok);
  } catch (err) {
    if (kind === 'helper') throw err;
    process.emitWarning(`${(err as Error).message}; spawning scripts from Node instead (slower)`);
    return new NodeSpawner();
  }
}
