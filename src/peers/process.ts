// Child processes for peer servers: each in its own process group, output kept in bounded memory, stopped as a group, and all killed when this process exits.
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import { setTimeout as sleep } from 'node:timers/promises';

export interface StartProcessOptions {
  /** Short name used as the prefix of error messages, e.g. "nginx". */
  name: string;
  command: string;
  args?: readonly string[];
  cwd?: string;
  /** The complete environment of the child; defaults to this process's environment. */
  env?: NodeJS.ProcessEnv;
  /** 'pipe' gives the caller child.stdin; by default stdin is /dev/null. */
  stdin?: 'ignore' | 'pipe';
  /** 'ignore' sends stdout to /dev/null (a benchmarked server's access lines must cost the reader nothing); by default it is captured. */
  stdout?: 'ignore' | 'pipe';
  /** Also append stdout / stderr to these files (useful when a test fails and the tail is not enough). */
  stdoutFile?: string;
  stderrFile?: string;
  /** Bytes of each stream kept in memory; older output is dropped first. Default 1 MiB. */
  maxOutputBytes?: number;
}

export interface ExitStatus {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export interface ManagedProcess {
  readonly name: string;
  readonly pid: number;
  /** Equal to pid: the child leads a new process group (and session). */
  readonly pgid: number;
  readonly child: ChildProcess;
  /** Settles when the group leader has exited (other group members may still be alive). */
  readonly exited: Promise<ExitStatus>;
  /** Aborted when the leader exits, so waits can give up early instead of timing out. */
  readonly exitSignal: AbortSignal;
  exitStatus(): ExitStatus | undefined;
  stdout(): string;
  stderr(): string;
  /** The last `maxChars` of stderr (or stdout when stderr is empty), for error messages. */
  outputTail(maxChars?: number): string;
}

/** Keeps the most recent bytes of a stream, so a chatty server cannot exhaust memory. */
class BoundedBuffer {
  private chunks: Buffer[] = [];
  private size = 0;
  dropped = 0;
  constructor(private readonly max: number) {}
  push(chunk: Buffer): void {
    this.chunks.push(chunk);
    this.size += chunk.length;
    while (this.size > this.max && this.chunks.length > 0) {
      const excess = this.size - this.max;
      const first = this.chunks[0]!;
      if (first.length <= excess) {
        this.chunks.shift();
        this.size -= first.length;
        this.dropped += first.length;
      } else {
        this.chunks[0] = first.subarray(excess);
        this.size -= excess;
        this.dropped += excess;
      }
    }
  }
  toString(): string {
    return Buffer.concat(this.chunks).toString('utf8');
  }
}

const running = new Set<ManagedProcess>();

/** Starts a child in its own process group; rejects (prefixed with the name) if it cannot be spawned at all. */
export async function startProcess(options: StartProcessOptions): Promise<ManagedProcess> {
  const { name } = options;
  const max = options.maxOutputBytes ?? 1024 * 1024;
  // detached: setsid() in the child, so one kill(-pgid) reaches every worker it forks,
  // and a Ctrl-C on the terminal is handled by us (see installExitHooks) rather than racing in every peer.
  const child = spawn(options.command, options.args ?? [], {
    cwd: options.cwd,
    env: options.env ?? process.env,
    detached: true,
    stdio: [options.stdin ?? 'ignore', options.stdout ?? 'pipe', 'pipe'],
  });
  await new Promise<void>((resolve, reject) => {
    child.once('spawn', resolve);
    child.once('error', (err) => reject(new Error(`${name}: cannot start ${options.command}: ${err.message}`)));
  });
  const pid = child.pid!;

  const out = new BoundedBuffer(max);
  const err = new BoundedBuffer(max);
  const files: fs.WriteStream[] = [];
  const capture = (stream: NodeJS.ReadableStream | null, buffer: BoundedBuffer, file?: string) => {
    if (!stream) return;
    const sink = file ? fs.createWriteStream(file, { flags: 'a' }) : undefined;
    if (sink) {
      sink.on('error', () => {}); // a failing log file must not crash the runner
      files.push(sink);
    }
    stream.on('data', (chunk: Buffer) => {
      buffer.push(chunk);
      sink?.write(chunk);
    });
    stream.on('error', () => {});
  };
  capture(child.stdout, out, options.stdoutFile);
  capture(child.stderr, err, options.stderrFile);
  child.once('close', () => {
    for (const f of files) f.end();
  });

  // A peer that a caller forgot to stop must not keep the event loop alive forever;
  // the exit hook below still kills it.
  child.unref();
  for (const s of [child.stdout, child.stderr]) (s as { unref?: () => void } | null)?.unref?.();

  let status: ExitStatus | undefined;
  const controller = new AbortController();
  const exited = new Promise<ExitStatus>((resolve) => {
    child.once('exit', (code, signal) => {
      status = { code, signal };
      controller.abort(new Error(`${name} exited (${describeExit(status)})`));
      resolve(status);
    });
  });

  const proc: ManagedProcess = {
    name,
    pid,
    pgid: pid,
    child,
    exited,
    exitSignal: controller.signal,
    exitStatus: () => status,
    stdout: () => out.toString(),
    stderr: () => err.toString(),
    outputTail(maxChars = 2000) {
      const text = (err.toString().trim() || out.toString().trim());
      return text.length > maxChars ? '…' + text.slice(-maxChars) : text;
    },
  };
  running.add(proc);
  installExitHooks();
  return proc;
}

export function describeExit(status: ExitStatus): string {
  return status.signal ? `signal ${status.signal}` : `code ${status.code}`;
}

/** True if a process with this pid exists and is not a zombie. */
export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
  const state = procState(pid);
  return state !== 'Z' && state !== 'X';
}

function procStat(pid: number): string[] | undefined {
  try {
    const text = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    return text.slice(text.lastIndexOf(')') + 2).split(' ');
  } catch {
    return undefined;
  }
}

function procState(pid: number): string | undefined {
  return procStat(pid)?.[0];
}

/**
 * Members of a process group. Zombies are left out unless asked for: an orphan killed with its
 * group is a zombie until init reaps it, and holds no resources meanwhile.
 */
export function processGroupMembers(pgid: number, includeZombies = false): number[] {
  if (process.platform !== 'linux') {
    try {
      process.kill(-pgid, 0);
      return [pgid];
    } catch {
      return [];
    }
  }
  const members: number[] = [];
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const fields = procStat(Number(entry));
    // After the name: state, ppid, pgrp.
    if (!fields || Number(fields[2]) !== pgid) continue;
    if (includeZombies || (fields[0] !== 'Z' && fields[0] !== 'X')) members.push(Number(entry));
  }
  return members;
}

/** Direct children of a pid (e.g. nginx workers of a master), zombies excluded. */
export function childPids(pid: number): number[] {
  if (process.platform !== 'linux') return [];
  const children: number[] = [];
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const fields = procStat(Number(entry));
    if (fields && Number(fields[1]) === pid && fields[0] !== 'Z' && fields[0] !== 'X') children.push(Number(entry));
  }
  return children;
}

function signalGroup(proc: ManagedProcess, signal: NodeJS.Signals): void {
  try {
    process.kill(-proc.pgid, signal);
  } catch {
    // ESRCH: the group is already empty.
  }
}

function isGone(proc: ManagedProcess): boolean {
  return proc.exitStatus() !== undefined && processGroupMembers(proc.pgid).length === 0;
}

async function waitGone(proc: ManagedProcess, ms: number): Promise<boolean> {
  const deadline = Date.now() + ms;
  while (!isGone(proc)) {
    if (Date.now() >= deadline) return false;
    await sleep(15);
  }
  return true;
}

/**
 * Signals the whole process group, waits up to graceMs for the leader and every member to exit,
 * then SIGKILLs the group. Rejects only if something survives SIGKILL.
 */
export async function stop(proc: ManagedProcess, signal: NodeJS.Signals = 'SIGTERM', graceMs = 5000): Promise<void> {
  signalGroup(proc, signal);
  if (!(await waitGone(proc, graceMs))) {
    signalGroup(proc, 'SIGKILL');
    if (!(await waitGone(proc, 3000))) {
      const left = processGroupMembers(proc.pgid);
      throw new Error(`${proc.name}: process group ${proc.pgid} survived SIGKILL (pids ${left.join(', ') || proc.pid})`);
    }
  }
  running.delete(proc);
}

/**
 * Runs a readiness check that is cut short if the process exits; on failure the process group is
 * killed and the error reads "<name>: failed to start: <output tail>".
 */
export async function waitUntilReady(
  proc: ManagedProcess,
  ready: (signal: AbortSignal) => Promise<void>,
  diagnostics?: () => string,
): Promise<void> {
  try {
    await ready(proc.exitSignal);
  } catch (e) {
    const status = proc.exitStatus();
    await stop(proc, 'SIGKILL', 1000).catch(() => {});
    const why = status ? `exited with ${describeExit(status)}` : (e as Error).message;
    const extra = diagnostics?.().trim();
    const tail = [proc.outputTail(), extra].filter(Boolean).join('\n');
    throw new Error(`${proc.name}: failed to start (${why})${tail ? ': ' + tail : ''}`);
  }
}

/** Stops every process started through startProcess that is still registered. */
export async function stopAll(graceMs = 2000): Promise<void> {
  const procs = [...running];
  const results = await Promise.allSettled(procs.map((p) => stop(p, 'SIGTERM', graceMs)));
  const failures = results.flatMap((r) => (r.status === 'rejected' ? [String((r.reason as Error).message)] : []));
  if (failures.length) throw new Error(`stopAll: ${failures.join('; ')}`);
}

/** The processes still registered (started and not yet stopped). */
export function runningProcesses(): ManagedProcess[] {
  return [...running];
}

function killAllNow(): void {
  for (const proc of running) signalGroup(proc, 'SIGKILL');
  running.clear();
}

let hooksInstalled = false;
let stopping = false;

function installExitHooks(): void {
  if (hooksInstalled) return;
  hooksInstalled = true;
  // 'exit' handlers cannot wait, so this is the last resort: SIGKILL whatever is left.
  process.on('exit', killAllNow);
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    const handler = () => {
      if (stopping) {
        // A second Ctrl-C: stop waiting for graceful shutdowns.
        killAllNow();
        process.exit(128 + (os.constants.signals[sig] ?? 0));
      }
      stopping = true;
      void stopAll(2000)
        .catch(() => killAllNow())
        .finally(() => {
          stopping = false;
          // Installing a listener disables Node's default "exit on signal"; restore it unless
          // someone else also listens and therefore owns the decision to exit.
          if (process.listenerCount(sig) <= 1) process.exit(128 + (os.constants.signals[sig] ?? 0));
        });
    };
    process.on(sig, handler);
  }
}
