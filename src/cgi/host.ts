// Runs one CGI script per request (RFC 3875): spawns it in its own process group, streams the body to its stdin while reading its stdout, parses the header block, and enforces the timeout, the concurrency cap and cleanup. No HTTP here: FastCGI reuses it as is.
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import type { AbortWatch } from '../lazy-abort.ts';
import { CgiHeadParser, CgiResponseError, type CgiHead } from './response.ts';
import { groupAlive, type StdoutSink } from './script-process.ts';
import { startSpawner, type ScriptExit, type ScriptProcess, type Spawner, type SpawnerKind } from './spawner.ts';

export interface CgiHostOptions {
  /** Scripts running at once. Default: 4 per core. */
  maxScripts?: number;
  /** Requests waiting for a free slot before the next ones get 503. Default: 8 × maxScripts. */
  queueLimit?: number;
  /** How long a request may wait for a slot. Default: timeoutMs. */
  queueTimeoutMs?: number;
  /** A script still running after this is killed. Default 30 s. */
  timeoutMs?: number;
  /** Time between SIGTERM and SIGKILL. Default 2 s. */
  killGraceMs?: number;
  /** Largest CGI header block accepted. Default 64 KiB. */
  maxHeaderBytes?: number;
  spawner?: SpawnerKind;
}

export interface CgiInvocation {
  /** Absolute path of the script (SCRIPT_FILENAME). */
  file: string;
  /** Working directory. Default: the script's own directory. */
  cwd?: string;
  /** Command-line arguments after argv[0] (the ISINDEX rule of §4.4). */
  args?: readonly string[];
  /** The complete environment (see env.ts). Nothing else is inherited. */
  env: Record<string, string>;
  /** The request body, streamed to stdin (§4.2); null gives the script /dev/null. Its errors are the host's to hear. */
  body: Readable | null;
  /** Aborting kills the script's process group (the client went away). */
  signal?: AbortWatch;
  /** An nph- script: its output is a whole HTTP response, passed on unparsed (§5). */
  nph?: boolean;
  /** Each line the script writes to stderr, without its newline. */
  onStderrLine?: (line: string) => void;
  /**
   * The script ran past the timeout after its header block: it is killed, and this says so for the
   * log, with what that did: `cut` when its response was cut short (the body errors with the
   * reason), not when the response was complete or discarded. Before its header block the outcome
   * is a 504 instead.
   */
  onLateKill?: (message: string, cut: boolean) => void;
}

export interface CgiFinish {
  exit: ScriptExit | undefined;
  timedOut: boolean;
  aborted: boolean;
}

/** A script's response, once its header block has been parsed. */
export interface CgiResponse {
  kind: 'response';
  /** The parsed header block (for nph-, the parsed status line and headers). */
  head: CgiHead;
  /**
   * The body as the script writes it, after its header block (for nph-, `head.raw` holds that block). It ends when
   * the script closes stdout and errors if the script is killed (timeout, abort) mid-way.
   * Destroying it kills the script. Made when first asked for.
   */
  readonly body: Readable;
  /**
   * The whole body at once when the script has finished writing it and `body` has not been asked
   * for (then it is consumed, and `body` is empty); otherwise undefined. A small answer then goes
   * out with its length, in one write, and without a stream in between.
   */
  takeWhole(): Buffer | undefined;
  /**
   * Nobody wants the body (a local redirect, a HEAD request): what the script still writes is read
   * and dropped. `why` names the case in the log, should the script be killed at the timeout.
   */
  discard(why?: 'local-redirect'): void;
  finished: Promise<CgiFinish>;
}

export type CgiOutcome =
  | CgiResponse
  | {
      kind: 'error';
      /** 502 bad output, 503 no slot, 504 timeout, 500 could not start, 400 bad request values. */
      status: 400 | 500 | 502 | 503 | 504;
      message: string;
      finished: Promise<CgiFinish>;
    };

const maxStderrLine = 8192;
/** What a kill at the timeout came after, when it cut nothing anyone reads (see onLateKill). */
const lateKillContext = {
  complete: 'after its response was complete',
  'local-redirect': 'after its local redirect was followed',
  unsent: 'after its response was sent without its body',
} as const;
const ignoreError = () => {};
/** Body bytes held for a response whose body nobody has asked for yet, before the script is paused. */
const heldBodyLimit = 64 * 1024;

type WaitResult = 'granted' | 'full' | 'timeout' | 'aborted' | 'closing';

/**
 * A request waiting for a slot: granted one (it inherits the slot of a finished run) or turned away.
 * A class rather than closures: half the requests wait under load, and each named closure costs a
 * defineProperty under tsx (esbuild's keepNames).
 */
class Waiter {
  private readonly timer: NodeJS.Timeout;
  private readonly onAbort: () => void;
  private done = false;

  constructor(
    private readonly queue: Waiter[],
    private readonly signal: AbortWatch | undefined,
    timeoutMs: number,
    private readonly resolve: (result: WaitResult) => void,
  ) {
    this.timer = setTimeout(() => this.leave('timeout'), timeoutMs);
    this.onAbort = this.leave.bind(this, 'aborted');
    signal?.addEventListener('abort', this.onAbort, { once: true });
    queue.push(this);
  }

  grant(): void {
    this.settle('granted');
  }

  cancel(): void {
    this.leave('closing');
  }

  private leave(why: 'timeout' | 'aborted' | 'closing'): void {
    const i = this.queue.indexOf(this);
    if (i !== -1) this.queue.splice(i, 1);
    this.settle(why);
  }

  private settle(result: WaitResult): void {
    if (this.done) return;
    this.done = true;
    clearTimeout(this.timer);
    this.signal?.removeEventListener('abort', this.onAbort);
    this.resolve(result);
  }
}

/** The outcome of a request whose script never ran. */
function notRun(status: 400 | 500 | 503, message: string, aborted = false): CgiOutcome {
  return { kind: 'error', status, message, finished: Promise.resolve({ exit: undefined, timedOut: false, aborted }) };
}

export class CgiHost {
  readonly maxScripts: number;
  readonly queueLimit: number;
  readonly timeoutMs: number;
  readonly killGraceMs: number;
  private readonly queueTimeoutMs: number;
  private readonly maxHeaderBytes: number;
  private active = 0;
  private readonly queue: Waiter[] = [];
  private readonly live = new Set<Run>();
  private closing = false;

  private constructor(
    private readonly spawner: Spawner,
    options: CgiHostOptions,
  ) {
    this.maxScripts = options.maxScripts ?? 4 * os.availableParallelism();
    this.queueLimit = options.queueLimit ?? 8 * this.maxScripts;
    this.timeoutMs = options.timeoutMs ?? 30_000;
    this.queueTimeoutMs = options.queueTimeoutMs ?? this.timeoutMs;
    this.killGraceMs = options.killGraceMs ?? 2000;
    this.maxHeaderBytes = options.maxHeaderBytes ?? 64 * 1024;
  }

  static async start(options: CgiHostOptions = {}): Promise<CgiHost> {
    return new CgiHost(await startSpawner(options.spawner), options);
  }

  /** 'native' (clone and execve from the runner, src/cgi/native), 'helper' (the Python spawner helpers) or 'node' (child_process.spawn). */
  get spawnerKind(): 'native' | 'helper' | 'node' {
    return this.spawner.kind;
  }

  /** The pids of the spawner helpers (the parents of the scripts); empty without them. */
  get spawnerPids(): number[] {
    return this.spawner.pids;
  }

  /** Scripts running now. */
  get running(): number {
    return this.active;
  }

  /**
   * Runs a script. Resolves once its header block has been parsed (or it failed); never rejects.
   * (Not an async function: on the common path the Run's own promise is the answer, without a
   * wrapper and its extra turns of the microtask queue.)
   */
  run(invocation: CgiInvocation): Promise<CgiOutcome> {
    const signal = invocation.signal;
    // The body may fail while the request waits for a slot (the client or web server gave up):
    // that error must be heard from now on, not only once the script runs (see Run.start).
    invocation.body?.on('error', ignoreError);
    for (const name in invocation.env) {
      if (!name || name.includes('=') || name.includes('\0') || invocation.env[name]!.includes('\0')) {
        return Promise.resolve(notRun(400, `cgi: the environment variable ${JSON.stringify(name)} cannot be passed`));
      }
    }
    if (invocation.args?.some((a) => a.includes('\0'))) return Promise.resolve(notRun(400, 'cgi: an argument holds a NUL byte'));
    if (this.closing) return Promise.resolve(notRun(503, 'cgi: the server is stopping'));
    if (signal?.aborted) return Promise.resolve(notRun(503, 'cgi: the request was aborted', true));
    if (this.active < this.maxScripts) {
      this.active++;
      return new Run(this, invocation).start();
    }
    // Beyond the cap, requests wait in a bounded queue; past its size or its wait, 503.
    return this.waitForSlot(signal).then((waited) => {
      if (waited === 'granted') return new Run(this, invocation).start();
      const message =
        waited === 'full' ? `cgi: ${this.maxScripts} scripts running and ${this.queueLimit} requests waiting`
        : waited === 'timeout' ? 'cgi: no free script slot in time'
        : waited === 'closing' ? 'cgi: the server is stopping'
        : 'cgi: the request was aborted while waiting';
      return notRun(503, message, waited === 'aborted');
    });
  }

  private waitForSlot(signal: AbortWatch | undefined): Promise<WaitResult> {
    if (this.queue.length >= this.queueLimit) return Promise.resolve('full');
    return new Promise((resolve) => new Waiter(this.queue, signal, this.queueTimeoutMs, resolve));
  }

  /** @internal a run ended: hand its slot to the next waiter. */
  release(run: Run): void {
    this.live.delete(run);
    this.releaseSlot();
  }

  private releaseSlot(): void {
    const next = this.queue.shift();
    if (next) next.grant();
    else this.active--;
  }

  /** @internal */
  track(run: Run): void {
    this.live.add(run);
  }

  /** @internal */
  spawn(invocation: CgiInvocation): ScriptProcess {
    const file = invocation.file;
    return this.spawner.spawn({
      file,
      argv: invocation.args?.length ? [file, ...invocation.args] : [file],
      // RFC 3875 §7.2 (UNIX): the current directory is the script's own.
      cwd: invocation.cwd ?? path.dirname(file),
      env: invocation.env,
      stdin: invocation.body !== null,
    });
  }

  /** @internal */
  get options() {
    return { timeoutMs: this.timeoutMs, killGraceMs: this.killGraceMs, maxHeaderBytes: this.maxHeaderBytes };
  }

  /** Kills every running script (TERM, then KILL) and stops the spawner. Waiting requests get 503. */
  async close(): Promise<void> {
    this.closing = true;
    for (const waiter of [...this.queue]) waiter.cancel();
    const runs = [...this.live];
    for (const run of runs) run.kill('cgi: the server is stopping');
    await Promise.all(runs.map((r) => r.finished));
    await this.spawner.close();
  }
}

/** One script from spawn to reaping. */
class Run implements StdoutSink {
  private proc!: ScriptProcess;
  private readonly parser: CgiHeadParser;
  private resolveOutcome!: (outcome: CgiOutcome) => void;
  private resolveFinished!: (finish: CgiFinish) => void;
  readonly finished: Promise<CgiFinish>;
  /** The header block has been parsed: what follows is body. */
  private responding = false;
  /** The body as a stream, once asked for (CgiResponse.body). */
  private body: ScriptBody | undefined;
  /** Body bytes that came before anyone asked for the stream (see CgiResponse.takeWhole). */
  private held: Buffer[] = [];
  private heldBytes = 0;
  private bodyTaken = false;
  /** The body was discarded (a local redirect, a HEAD): a kill cuts nothing anyone reads. */
  private discarded: false | 'local-redirect' | 'unsent' = false;
  /** Why the body broke off (a kill) before there was a stream to end with it. */
  private bodyError: Error | undefined;
  private outcomeSent = false;
  private stdoutEnded = false;
  private exit: ScriptExit | undefined;
  private timedOut = false;
  private aborted = false;
  private killing = false;
  private killTimer: NodeJS.Timeout | undefined;
  private timeout: NodeJS.Timeout | undefined;
  private released = false;
  private stderrTail = '';
  private onAbort: (() => void) | undefined;

  constructor(
    private readonly host: CgiHost,
    private readonly invocation: CgiInvocation,
  ) {
    this.parser = new CgiHeadParser({ maxHeaderBytes: host.options.maxHeaderBytes, nph: invocation.nph });
    this.finished = new Promise((resolve) => (this.resolveFinished = resolve));
  }

  start(): Promise<CgiOutcome> {
    const outcome = new Promise<CgiOutcome>((resolve) => (this.resolveOutcome = resolve));
    const { invocation, host } = this;
    this.host.track(this);
    let proc: ScriptProcess;
    try {
      proc = this.proc = host.spawn(invocation);
    } catch (err) {
      this.host.release(this);
      this.resolveFinished({ exit: undefined, timedOut: false, aborted: false });
      return Promise.resolve({ kind: 'error', status: 500, message: `cgi: cannot start ${invocation.file}: ${(err as Error).message}`, finished: this.finished });
    }

    proc.onStderr = (chunk) => this.onStderr(chunk);
    void proc.exited.then((exit) => this.onExit(exit));
    this.timeout = setTimeout(() => {
      this.timedOut = true;
      const reason = `cgi: the script ran longer than ${host.options.timeoutMs / 1000} s`;
      if (this.responding) {
        // Complete, or discarded (a local redirect, a HEAD): nobody reads what the kill cuts off.
        const after = this.stdoutEnded ? 'complete' : this.discarded;
        if (after) this.invocation.onLateKill?.(`${reason} ${lateKillContext[after]}; it was killed`, false);
        else this.invocation.onLateKill?.(`${reason}; its response was cut short`, true);
      }
      this.kill(reason, 504);
    }, host.options.timeoutMs);

    const signal = invocation.signal;
    if (signal) {
      this.onAbort = () => {
        this.aborted = true;
        this.kill('cgi: the client went away', 503);
      };
      signal.addEventListener('abort', this.onAbort, { once: true });
    }

    // §4.2: the body goes to stdin while stdout is read, so a script that writes a lot before
    // reading cannot deadlock against us (Apache's mod_cgi reads only after writing it all).
    const body = invocation.body;
    if (body) {
      const stdin = proc.stdin;
      if (!stdin) {
        body.resume();
      } else if (body.destroyed) {
        // It failed while the request waited for a slot (its error was heard then): the script
        // gets what there is, nothing, and its end, rather than waiting for a body that cannot come.
        stdin.destroy();
      } else {
        body.pipe(stdin);
        const drain = () => {
          // The script stopped reading (it exited or closed stdin): what it did not read is dropped,
          // and the source is still consumed so a keep-alive connection stays usable.
          body.unpipe(stdin);
          stdin.destroy();
          body.resume();
        };
        stdin.once('error', drain);
        stdin.once('close', () => {
          if (!body.readableEnded) drain();
        });
        body.once('error', () => stdin.destroy());
      }
    }

    // (When the helper itself goes away, the spawner ends stdout too; the exit says why.)
    proc.readStdout(this);
    return outcome;
  }

  private sendOutcome(outcome: CgiOutcome): void {
    if (this.outcomeSent) return;
    this.outcomeSent = true;
    this.resolveOutcome(outcome);
  }

  private fail(status: 500 | 502 | 504 | 503, message: string): void {
    if (this.outcomeSent) {
      if (this.responding) this.breakBody(new Error(message));
      return;
    }
    this.sendOutcome({ kind: 'error', status, message, finished: this.finished });
  }

  /** @internal the script's output (Run is the sink of its stdout). */
  onStdout(chunk: Buffer): void {
    if (this.responding) {
      const body = this.body;
      if (body) {
        // Once the body is destroyed (a kill, or the consumer left), output is drained, not paused
        // for: a paused pipe would hold the script, and its slot, until the SIGKILL.
        if (body.destroyed) return;
        if (!body.push(chunk)) this.proc.pauseStdout();
        return;
      }
      if (this.bodyError) return;
      this.held.push(chunk);
      this.heldBytes += chunk.length;
      // Nobody has asked for the body yet: a pipe's worth waits, and then the script.
      if (this.heldBytes >= heldBodyLimit) this.proc.pauseStdout();
      return;
    }
    if (this.outcomeSent || this.killing) return; // draining after an error
    let parsed;
    try {
      parsed = this.parser.push(chunk);
    } catch (err) {
      this.kill((err as CgiResponseError).message, 502);
      return;
    }
    if (!parsed) return;
    this.responding = true;
    if (parsed.rest.length) {
      this.held.push(parsed.rest);
      this.heldBytes += parsed.rest.length;
    }
    this.sendOutcome(new ScriptResponse(parsed.head, this, this.finished));
  }

  /** @internal CgiResponse.body: the held bytes, then the rest as it comes. */
  bodyStream(): Readable {
    if (this.body) return this.body;
    const body = (this.body = new ScriptBody(this));
    if (this.bodyError) {
      body.destroy(this.bodyError);
      return body;
    }
    for (const chunk of this.held) body.push(chunk);
    this.held = [];
    // (Output paused for the held bytes resumes when the reader asks for more: ScriptBody._read.)
    if (this.stdoutEnded) body.push(null);
    return body;
  }

  /** @internal CgiResponse.takeWhole. */
  takeWhole(): Buffer | undefined {
    if (this.body || this.bodyTaken || this.bodyError || !this.stdoutEnded) return undefined;
    this.bodyTaken = true;
    const held = this.held;
    this.held = [];
    return held.length === 1 ? held[0] : Buffer.concat(held);
  }

  /** @internal CgiResponse.discard. */
  discard(why?: 'local-redirect'): void {
    this.discarded = why ?? 'unsent';
    this.bodyStream().resume();
  }

  /** The body breaks off: the stream errors, or will when it is made. */
  private breakBody(err: Error): void {
    if (this.body) this.body.destroy(err);
    else if (!this.bodyError && !this.bodyTaken) {
      this.bodyError = err;
      this.held = [];
    }
  }

  /** @internal ScriptBody wants more: let the script's output flow again. */
  resumeOutput(): void {
    if (!this.stdoutEnded) this.proc.resumeStdout();
  }

  /** @internal ScriptBody was destroyed: before the end, nobody will read the rest. */
  abandonOutput(): void {
    if (!this.stdoutEnded) this.kill('cgi: the response was abandoned');
  }

  /** @internal */
  onStdoutEnd(): void {
    if (this.stdoutEnded) return;
    this.stdoutEnded = true;
    if (this.responding) {
      if (this.killing) this.breakBody(new Error(this.killReason ?? 'cgi: the script was killed'));
      else this.body?.push(null);
    } else if (!this.outcomeSent) {
      const error = this.parser.end();
      // The exit status says why; it is at most a moment away when stdout has closed.
      const report = () => {
        if (this.killing) return this.fail(this.killStatus, this.killReason!);
        this.fail(502, `${error.message}${this.exit ? ` (${describeExit(this.exit)})` : ''}`);
      };
      if (this.exit || this.killing) report();
      else {
        const t = setTimeout(report, 200);
        void this.proc.exited.then(() => {
          clearTimeout(t);
          report();
        });
      }
    }
    this.maybeDone();
  }

  private onExit(exit: ScriptExit): void {
    this.exit = exit;
    if (exit.error && !this.outcomeSent) {
      this.flushStderr();
      this.fail(500, `cgi: ${exit.error}`);
      // No output will come: release the stdout connection now.
      this.proc.closeStdout();
    }
    this.maybeDone();
  }

  private killStatus: 500 | 502 | 503 | 504 = 502;
  private killReason: string | undefined;

  /** Ends the script: TERM to its process group, KILL after the grace period. */
  kill(reason: string, status: 500 | 502 | 503 | 504 = 502): void {
    if (this.killing) return;
    this.killing = true;
    this.killReason = reason;
    this.killStatus = status;
    this.fail(status, reason);
    this.proc.killGroup('SIGTERM');
    this.killTimer = setTimeout(() => {
      this.proc.killGroup('SIGKILL');
      // Whatever still holds stdout (an escaped process) no longer counts.
      setTimeout(() => this.proc.closeStdout(), this.host.options.killGraceMs).unref();
    }, this.host.options.killGraceMs);
    // Keep reading stdout, discarding it, so the script is not blocked on a full pipe.
    this.proc.resumeStdout();
    this.maybeDone();
  }

  private maybeDone(): void {
    if (this.released || !this.exit || !this.stdoutEnded) return;
    this.released = true;
    clearTimeout(this.timeout);
    if (this.onAbort) this.invocation.signal?.removeEventListener('abort', this.onAbort);
    this.proc.closeStdout();
    this.flushStderr();
    const pid = this.proc.pid;
    if (!this.exit.groupLeft || pid === undefined) return this.settle();
    // The script is gone and its output complete, but members of its process group (background
    // jobs) are still running: they are killed too, so no script outlives its request.
    if (!this.killing) {
      this.killing = true;
      this.proc.killGroup('SIGTERM');
    }
    const grace = this.host.options.killGraceMs;
    const termDeadline = Date.now() + grace;
    let killed = false;
    const poll = setInterval(() => {
      if (!groupAlive(pid)) {
        clearInterval(poll);
        return this.settle();
      }
      if (!killed && Date.now() >= termDeadline) {
        killed = true;
        this.proc.killGroup('SIGKILL');
      } else if (killed && Date.now() >= termDeadline + grace) {
        // Only zombies nobody reaps can survive SIGKILL; they hold nothing.
        clearInterval(poll);
        this.settle();
      }
    }, 10);
  }

  /** The run is over: its slot goes to the next request, and `finished` settles. */
  private settle(): void {
    clearTimeout(this.killTimer);
    this.host.release(this);
    this.resolveFinished({ exit: this.exit, timedOut: this.timedOut, aborted: this.aborted });
  }

  private onStderr(chunk: Buffer | null): void {
    const sink = this.invocation.onStderrLine;
    if (!sink) return;
    if (chunk === null) return this.flushStderr();
    let text = this.stderrTail + chunk.toString('utf8');
    let nl;
    while ((nl = text.indexOf('\n')) !== -1) {
      sink(text.slice(0, nl).replace(/\r$/, ''));
      text = text.slice(nl + 1);
    }
    // A script that never ends its line must not grow this without bound.
    while (text.length > maxStderrLine) {
      sink(text.slice(0, maxStderrLine));
      text = text.slice(maxStderrLine);
    }
    this.stderrTail = text;
  }

  private flushStderr(): void {
    if (this.stderrTail) this.invocation.onStderrLine?.(this.stderrTail);
    this.stderrTail = '';
  }
}

/** A script's response once its header block is parsed: the body becomes a stream only when asked for. */
class ScriptResponse implements CgiResponse {
  readonly kind = 'response';

  constructor(
    readonly head: CgiHead,
    private readonly run: Run,
    readonly finished: Promise<CgiFinish>,
  ) {}

  get body(): Readable {
    return this.run.bodyStream();
  }

  takeWhole(): Buffer | undefined {
    return this.run.takeWhole();
  }

  discard(why?: 'local-redirect'): void {
    this.run.discard(why);
  }
}

/** A script's body after its header block, as a stream. */
class ScriptBody extends Readable {
  constructor(private readonly run: Run) {
    super();
    // A kill mid-way destroys it with the reason, which the run has logged: a consumer that
    // cares (the response writer cuts the response) listens itself; one that resumed it and left
    // (a local redirect) must not bring the process down.
    this.on('error', ignoreError);
  }

  override _read(): void {
    this.run.resumeOutput();
  }

  override _destroy(err: Error | null, callback: (err?: Error | null) => void): void {
    this.run.abandonOutput();
    callback(err);
  }
}

export function describeExit(exit: ScriptExit): string {
  if (exit.error) return exit.error;
  return exit.signal ? `killed by ${exit.signal}` : `exit status ${exit.code}`;
}
