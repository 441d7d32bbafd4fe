// Starts CGI scripts from the runner's own process through the native addon (src/cgi/native/spawn.c): clone(CLONE_VM) and execve, no fork, the script's pipes read on the event loop, its exit reported through a pidfd.
import { createRequire } from 'node:module';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { Readable, Writable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { OrphanReaper, type ReaperCalls } from './orphans.ts';
import { endScripts, exitFromWaitStatus, signalGroup, type ScriptExit, type ScriptProcess, type SpawnRequest, type Spawner, type StdoutSink } from './script-process.ts';

/** An opaque handle on one script, for pause, resume and closeStdout. */
type ScriptHandle = object;

interface SpawnAddon extends ReaperCalls {
  /** Throws when the kernel lacks pidfd_open or close_range. */
  check(): void;
  /** spawn() holds its thread until the script has called execve (not on x86-64 or arm64). */
  readonly waitsForExec: boolean;
  /** Signal dispositions are read again at the next spawn (a signal got a handler). */
  forgetDispositions(): void;
  /** Where every script's events go, with the target its spawn() was given. */
  setEventHandler(handler: (target: NativeProcess, kind: number, a: unknown, b: unknown) => void): void;
  /** See spawn.c. */
  spawn(file: string, argv: readonly string[], env: string, cwd: string, withStdin: boolean, inThread: boolean, target: NativeProcess, firstReadDelayMs: number): ScriptHandle;
  pause(handle: ScriptHandle): void;
  resume(handle: ScriptHandle): void;
  closeStdout(handle: ScriptHandle): void;
  /** Signals the script itself (not its group), until it is reaped: false after. */
  signalScript(handle: ScriptHandle, signal: number): boolean;
}

/** The events of spawn.c's onEvent. */
export const enum SpawnEvent {
  Started,
  Failed,
  Stdout,
  StdoutEnd,
  Stderr,
  StderrEnd,
  Exit,
  /** The events of one turn of the event loop, as (kind, a, b) triples. */
  Batch,
}

/** Where `npm install` builds the addon (binding.gyp). */
const addonPath = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../build/Release/spawn.node');

let loaded: SpawnAddon | Error | undefined;

/** The addon, or why it cannot be used (not built: no compiler at install time; not Linux). */
export function loadSpawnAddon(): SpawnAddon | Error {
  if (loaded) return loaded;
  if (process.platform !== 'linux') return (loaded = new Error('cgi: the in-process spawner needs Linux (pidfd)'));
  try {
    const addon = createRequire(import.meta.url)(addonPath) as SpawnAddon;
    addon.check();
    addon.setEventHandler(deliver);
    // Node installs a signal's handler when it gets its first listener: the addon's list of
    // signals to reset in a new script is then out of date.
    process.on('newListener', (event) => {
      if (typeof event === 'string' && event.startsWith('SIG')) addon.forgetDispositions();
    });
    loaded = addon;
  } catch (err) {
    // ENOSYS: an older kernel; EPERM: a seccomp filter (a container's) that refuses the call.
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOSYS' || code === 'EPERM') return (loaded = new Error(`cgi: the in-process spawner needs pidfd_open and close_range, from Linux 5.9, allowed by any seccomp filter (${(err as Error).message})`));
    loaded = new Error(`cgi: the in-process spawner is not built (${(err as Error).message.split('\n')[0]}); \`npm rebuild\` builds it`);
  }
  return loaded;
}

/** The addon's event handler: one function for every script (not a closure per spawn). */
function deliver(proc: NativeProcess, kind: SpawnEvent, a: unknown, b: unknown): void {
  proc.spawner.onEvent(proc, kind, a, b);
}

const pipeWindow = 64 * 1024;

/**
 * A script's stdout as a Readable, for whoever asks for `stdout` rather than reading it through
 * readStdout(): methods rather than per-script closures (see Waiter in host.ts).
 */
class ScriptOutput extends Readable implements StdoutSink {
  constructor(private readonly proc: NativeProcess) {
    super({ highWaterMark: pipeWindow });
  }

  onStdout(chunk: Buffer): void {
    if (!this.push(chunk)) this.proc.pauseStdout();
  }

  onStdoutEnd(): void {
    this.push(null);
  }

  override _read(): void {
    this.proc.resumeStdout();
  }

  override _destroy(err: Error | null, callback: (err?: Error | null) => void): void {
    this.proc.closeStdout();
    callback(err);
  }
}

/**
 * A script started through the addon. Its stdout goes to the sink given to readStdout() (the host)
 * or, when asked for, to a stream; stdin joins the script's pipe when the spawn completes.
 */
class NativeProcess implements ScriptProcess {
  onStderr: ((chunk: Buffer | null) => void) | null = null;
  readonly exited: Promise<ScriptExit>;
  readonly stdin: Writable | null;
  pid: number | undefined;
  handle: ScriptHandle | undefined;
  private resolveExit!: (exit: ScriptExit) => void;
  /** @internal counted in the spawner's busy scripts: started, and stdout not ended yet. */
  busy = false;
  /** Stdout reading stopped for backpressure. */
  private paused = false;
  private sink: StdoutSink | undefined;
  private output: ScriptOutput | undefined;
  /** The end of stdout has been passed on (or is due to a sink not given yet). */
  private stdoutEnded = false;
  private in: net.Socket | undefined;
  /** A write, or the end, that came before the script's stdin pipe did. */
  private pendingWrite: (() => void) | undefined;
  private pendingEnd: (() => void) | undefined;
  /** The last signal asked for before the pid was known. */
  private pendingSignal: NodeJS.Signals | undefined;

  constructor(
    readonly addon: SpawnAddon,
    /** @internal the spawner that started it, which gets its events first. */
    readonly spawner: NativeSpawner,
    hasStdin: boolean,
  ) {
    this.exited = new Promise((resolve) => (this.resolveExit = resolve));
    this.stdin = hasStdin
      ? new Writable({
          highWaterMark: pipeWindow,
          write: (chunk: Buffer, _encoding, callback) => {
            const write = () => this.in!.write(chunk, (err) => callback(err ?? undefined));
            if (this.in) write();
            else this.pendingWrite = write;
          },
          final: (callback) => {
            const end = () => this.in!.end(callback);
            if (this.in) end();
            else this.pendingEnd = end;
          },
          destroy: (err, callback) => {
            this.in?.destroy();
            callback(err);
          },
        })
      : null;
    // EPIPE when the script exits without reading it all: the host stops writing (see host.ts).
    this.stdin?.on('error', () => {});
  }

  get stdout(): Readable {
    if (!this.output) {
      this.output = new ScriptOutput(this);
      this.output.on('error', () => {});
      this.readStdout(this.output);
    }
    return this.output;
  }

  readStdout(sink: StdoutSink): void {
    this.sink = sink;
    // Ended before there was a sink (a spawn refused at once): the end comes as a stream's would, later.
    if (this.stdoutEnded) process.nextTick(() => sink.onStdoutEnd());
  }

  pauseStdout(): void {
    if (this.paused || this.stdoutEnded || !this.handle) return;
    this.paused = true;
    this.addon.pause(this.handle);
  }

  resumeStdout(): void {
    if (!this.paused || !this.handle) return;
    this.paused = false;
    this.addon.resume(this.handle);
  }

  closeStdout(): void {
    if (this.stdoutEnded) return;
    if (this.handle) this.addon.closeStdout(this.handle);
    // No end event follows closeStdout (spawn.c): this is the end.
    this.endStdout();
  }

  private endStdout(): void {
    if (this.stdoutEnded) return;
    this.stdoutEnded = true;
    this.sink?.onStdoutEnd();
  }

  onEvent(kind: SpawnEvent, a: unknown, b: unknown): void {
    switch (kind) {
      case SpawnEvent.Stdout:
        if (this.stdoutEnded) break;
        // Output nobody asked for yet waits in the stream, which pauses the pipe when full.
        if (!this.sink) void this.stdout;
        this.sink!.onStdout(a as Buffer);
        break;
      case SpawnEvent.StdoutEnd:
        this.endStdout();
        break;
      case SpawnEvent.Stderr:
        this.onStderr?.(a as Buffer);
        break;
      case SpawnEvent.StderrEnd:
        this.onStderr?.(null);
        break;
      case SpawnEvent.Exit:
        this.resolveExit(exitFromWaitStatus(a as number, b as boolean));
        break;
      case SpawnEvent.Started:
        this.started(a as number, b as number);
        break;
      case SpawnEvent.Failed:
        // Not started (ENOENT, EACCES, ENOEXEC): no output will come, and the reason is the exit.
        this.endStdout();
        this.stdin?.destroy();
        this.onStderr?.(null);
        this.resolveExit({ code: null, signal: null, groupLeft: false, error: a as string });
        break;
    }
  }

  private started(pid: number, stdinFd: number): void {
    this.pid = pid;
    if (this.pendingSignal) this.killGroup(this.pendingSignal);
    if (stdinFd < 0) return;
    // A libuv pipe handle, as child_process's own stdin pipes are: writes with backpressure, EPIPE as an error.
    const stdin = (this.in = new net.Socket({ fd: stdinFd, readable: false, writable: true }));
    stdin.on('error', () => {});
    // Closed by the script (it exited, or closed its stdin): what it did not read is dropped.
    stdin.on('close', () => this.stdin!.destroy());
    if (this.stdin!.destroyed) stdin.destroy();
    this.pendingWrite?.();
    this.pendingEnd?.();
    this.pendingWrite = this.pendingEnd = undefined;
  }

  killGroup(signal: NodeJS.Signals): void {
    if (this.pid === undefined) {
      this.pendingSignal = signal;
      return;
    }
    // A script just started may not have made its group yet (the spawn does not wait for it): then
    // the signal goes to the script itself, which blocks signals until it executes and gets it then.
    if (!signalGroup(this.pid, signal) && this.handle) this.addon.signalScript(this.handle, os.constants.signals[signal]);
  }
}

export class NativeSpawner implements Spawner {
  readonly kind = 'native' as const;
  /** No helper processes: the scripts are the runner's own children. */
  readonly pids: number[] = [];
  /** Scripts spawned (or being spawned) and not exited yet: what close() stops. */
  private readonly live = new Set<NativeProcess>();
  /** Scripts started whose stdout has not ended. */
  private busy = 0;
  private readonly orphans: OrphanReaper;

  /**
   * How long after its start a script's output is first read, unless it exits sooner: then its
   * whole output, the ends of its pipes and its exit reach JS at once, and a small answer goes out
   * whole, in one write with its length (see watch() in spawn.c). Longer, and streaming starts late.
   */
  readonly firstReadDelayMs: number;

  constructor(
    private readonly addon: SpawnAddon,
    options: { firstReadDelayMs?: number } = {},
  ) {
    this.firstReadDelayMs = options.firstReadDelayMs ?? 5;
    this.orphans = OrphanReaper.acquire(addon);
  }

  spawn(request: SpawnRequest): ScriptProcess {
    const proc = new NativeProcess(this.addon, this, request.stdin);
    // One string of NUL-terminated entries: one copy out of JS in the addon. (The host has refused
    // names and values that hold a NUL.)
    let env = '';
    for (const name in request.env) env += `${name}=${request.env[name]}\0`;
    this.live.add(proc);
    // Where the addon's spawn waits for execve (not on x86-64 or arm64), on a worker thread while
    // other scripts are busy: the spawn holds its thread until the new process has called execve,
    // which on busy cores waits for a turn to run. With no other script at work that wait is short
    // and the hand-over to a thread would cost more, so the spawn happens here. (A script whose
    // stdout has ended is done with, even before its exit is seen.)
    const inThread = this.addon.waitsForExec && this.busy > 0;
    this.busy++;
    proc.busy = true;
    try {
      proc.handle = this.addon.spawn(request.file, request.argv, env, request.cwd, request.stdin, inThread, proc, this.firstReadDelayMs);
    } catch (err) {
      // Refused before any spawn (out of memory): as a failed start, so nothing waits for it.
      this.onEvent(proc, SpawnEvent.Failed, `cannot start ${request.file}: ${(err as Error).message}`, undefined);
    }
    return proc;
  }

  /** @internal the addon's events for one of this spawner's scripts (see deliver). */
  onEvent(proc: NativeProcess, kind: SpawnEvent, a: unknown, b: unknown): void {
    if (kind === SpawnEvent.Batch) {
      const events = a as unknown[];
      for (let i = 0; i < events.length; i += 3) this.onEvent(proc, events[i] as SpawnEvent, events[i + 1], events[i + 2]);
      return;
    }
    if (proc.busy && (kind === SpawnEvent.StdoutEnd || kind === SpawnEvent.Exit || kind === SpawnEvent.Failed)) {
      proc.busy = false;
      this.busy--;
    }
    if (kind === SpawnEvent.Failed) {
      this.live.delete(proc);
    } else if (kind === SpawnEvent.Exit) {
      this.live.delete(proc);
      this.orphans.scriptExited();
    }
    proc.onEvent(kind, a, b);
  }

  async close(): Promise<void> {
    await endScripts([...this.live]);
    await this.orphans.release();
  }
}
