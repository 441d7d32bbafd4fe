// What every way of starting CGI scripts shares: the spawn request, the running script as the host sees it, and process-group signalling.
import os from 'node:os';
import type { Readable, Writable } from 'node:stream';

export interface SpawnRequest {
  /** Absolute path of the executable. */
  file: string;
  /** argv, including argv[0]. */
  argv: readonly string[];
  cwd: string;
  /** The complete environment: nothing else is inherited. */
  env: Record<string, string>;
  /** Whether the script gets a stdin to write the request body to (otherwise /dev/null). */
  stdin: boolean;
}

export interface ScriptExit {
  code: number | null;
  signal: NodeJS.Signals | null;
  /** Other members of the script's process group were still running when it exited. */
  groupLeft: boolean;
  /** Why the script could not be started, when it could not. */
  error?: string;
}

/**
 * Where a script's stdout goes when the host reads it without a stream (see readStdout): each
 * chunk, then its end, once, whether EOF, a close or an error ended it.
 */
export interface StdoutSink {
  onStdout(chunk: Buffer): void;
  onStdoutEnd(): void;
}

export interface ScriptProcess {
  /** Stdout as a stream. Either this or readStdout(), not both. */
  readonly stdout: Readable;
  /**
   * Stdout to `sink`, without the stream: per request, a Readable and its events cost more than
   * the rest of what the host does with the output.
   */
  readStdout(sink: StdoutSink): void;
  /** Stops reading stdout (backpressure) until resumeStdout(). */
  pauseStdout(): void;
  resumeStdout(): void;
  /** Nobody will read the rest (the script gets EPIPE on its next write); the sink's end follows, if it has not come. */
  closeStdout(): void;
  readonly stdin: Writable | null;
  /** The pid, which is also the process group id, once known. */
  readonly pid: number | undefined;
  /** Settles when the script has exited and been reaped (or could not start). Never rejects. */
  readonly exited: Promise<ScriptExit>;
  /** Stderr bytes as they arrive, then null when stderr is closed. Set right after spawn(). */
  onStderr: ((chunk: Buffer | null) => void) | null;
  /** Signals the script's whole process group (also before its pid is known here). */
  killGroup(signal: NodeJS.Signals): void;
}

/** readStdout() and the rest for a process whose stdout is a stream in any case. */
export abstract class StreamedStdout {
  abstract readonly stdout: Readable;

  readStdout(sink: StdoutSink): void {
    const stdout = this.stdout;
    let ended = false;
    const end = () => {
      if (ended) return;
      ended = true;
      sink.onStdoutEnd();
    };
    stdout.on('data', (chunk: Buffer) => sink.onStdout(chunk));
    stdout.once('end', end);
    stdout.once('close', end);
    stdout.on('error', end);
  }

  pauseStdout(): void {
    this.stdout.pause();
  }

  resumeStdout(): void {
    this.stdout.resume();
  }

  closeStdout(): void {
    if (!this.stdout.destroyed) this.stdout.destroy();
  }
}

export interface Spawner {
  readonly kind: 'native' | 'helper' | 'node';
  /** The pids of the helpers (the parents of the scripts); empty without helpers. */
  readonly pids: number[];
  spawn(request: SpawnRequest): ScriptProcess;
  /** Kills every script still running and stops the helpers. */
  close(): Promise<void>;
}

export type SpawnerKind = 'auto' | 'native' | 'helper' | 'node';

const signalNames = new Map<number, NodeJS.Signals>(
  Object.entries(os.constants.signals).map(([name, num]) => [num, name as NodeJS.Signals]),
);

/** Signals a process group; false when it has no member (ESRCH). */
export function signalGroup(pid: number, signal: NodeJS.Signals): boolean {
  try {
    process.kill(-pid, signal);
  } catch (err) {
    // ESRCH: the group is already empty (or not made yet).
    if ((err as NodeJS.ErrnoException).code === 'ESRCH') return false;
  }
  return true;
}

/** True while any process of the group exists (a zombie not yet reaped included). */
export function groupAlive(pgid: number): boolean {
  try {
    process.kill(-pgid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** A script's exit from its wait(2) status (-1: unknown, it was reaped elsewhere). */
export function exitFromWaitStatus(status: number, groupLeft: boolean): ScriptExit {
  if (status < 0) return { code: null, signal: null, groupLeft };
  const signal = status & 0x7f;
  return { code: signal ? null : (status >> 8) & 0xff, signal: signal ? (signalNames.get(signal) ?? null) : null, groupLeft };
}

/** Stops scripts when the runner stops: SIGTERM to each process group, SIGKILL to those still running 2 s later. */
export async function endScripts(procs: readonly ScriptProcess[]): Promise<void> {
  for (const proc of procs) proc.killGroup('SIGTERM');
  const timer = setTimeout(() => procs.forEach((p) => p.killGroup('SIGKILL')), 2000);
  await Promise.all(procs.map((p) => p.exited));
  clearTimeout(timer);
}
