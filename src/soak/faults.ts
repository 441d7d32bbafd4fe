// `npm run faults`: failures injected while load runs: a worker killed with SIGKILL, nginx reloaded, an app that throws on 1% of requests, a script that forks and exits, a script printing to a client that left, a full disk while spooling a body.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { intFlag, numberFlag, parseScriptArgs } from '../command.ts';
import { setTimeout as sleep } from 'node:timers/promises';
import { readAllStats, readCmdline } from '../bench/proc-stats.ts';
import { runMixedLoad, type MixedLoadResult } from './mixed-load.ts';
import { startCgiStack, startFcgiStack, type SoakStack } from './stack.ts';

export interface FaultResult {
  name: string;
  /** What happened, in numbers. */
  figures: Record<string, number | string>;
  /** Problems found; empty means the fault was survived as it should be. */
  failures: string[];
  /** Set when the fault could not be set up here (and why). */
  skipped?: string;
}

export interface FaultOptions {
  /** Length of the load during the fault. Default 20 s. */
  durationMs?: number;
  /** Connections of the load. Default 32. */
  connections?: number;
}

/** Pids of processes whose command line contains `text`. */
export function processesMatching(text: string): number[] {
  const pids: number[] = [];
  for (const stat of readAllStats().values()) {
    if (stat.state === 'Z' || stat.state === 'X' || stat.pid === process.pid) continue;
    if (readCmdline(stat.pid).includes(text)) pids.push(stat.pid);
  }
  return pids;
}

/** Polls until `fn` holds; resolves with the time it took, or -1 after timeoutMs. */
async function timeUntil(fn: () => boolean, timeoutMs: number, stepMs = 10): Promise<number> {
  const started = performance.now();
  for (;;) {
    if (fn()) return Math.round(performance.now() - started);
    if (performance.now() - started > timeoutMs) return -1;
    await sleep(stepMs);
  }
}

function loadFigures(load: MixedLoadResult): Record<string, number | string> {
  return { requests: load.requests, 'failed requests': load.errors, 'sent again after a keep-alive race': load.retried, ...(Object.keys(load.errorKinds).length ? { 'failure kinds': JSON.stringify(load.errorKinds) } : {}) };
}

function workerPids(stack: SoakStack): number[] {
  return stack.watchedPids().filter((pid) => pid !== stack.runner.pid && readCmdline(pid).includes(' fcgi '));
}

/** fcgi --workers 2 behind nginx; one worker is killed with SIGKILL a third into the load. */
export async function killWorker(options: FaultOptions = {}): Promise<FaultResult> {
  const durationMs = options.durationMs ?? 20_000;
  const stack = await startFcgiStack({ workers: 2 });
  const failures: string[] = [];
  try {
    const loading = runMixedLoad({ baseUrl: stack.baseUrl, connections: options.connections ?? 32, durationMs, mix: { get: 70, post: 10, stream: 20 } });
    await sleep(durationMs / 3);
    const before = workerPids(stack);
    const victim = before[0];
    if (victim === undefined) throw new Error('no worker to kill');
    process.kill(victim, 'SIGKILL');
    const restartMs = await timeUntil(() => {
      const now = workerPids(stack);
      return now.length === before.length && !now.includes(victim);
    }, 15_000);
    const load = await loading;
    if (restartMs < 0) failures.push('the killed worker was not replaced within 15 s');
    // After the restart every request succeeds again.
    const after = await runMixedLoad({ baseUrl: stack.baseUrl, connections: 8, durationMs: 1500, mix: { get: 1 } });
    if (after.errors > 0) failures.push(`${after.errors} of ${after.requests} requests failed after the restart`);
    if (load.errors > (options.connections ?? 32)) failures.push(`${load.errors} requests failed, more than were in flight`);
    return { name: 'kill -9 of a worker', figures: { ...loadFigures(load), 'worker replaced after (ms)': restartMs, 'requests after the restart': after.requests, 'failed after the restart': after.errors }, failures };
  } finally {
    await stack.stop();
  }
}

/** nginx reloaded (SIGHUP) three times while the load runs. */
export async function nginxReload(options: FaultOptions = {}): Promise<FaultResult> {
  const durationMs = options.durationMs ?? 20_000;
  const stack = await startFcgiStack();
  try {
    const loading = runMixedLoad({ baseUrl: stack.baseUrl, connections: options.connections ?? 32, durationMs, mix: { get: 70, post: 10, stream: 20 } });
    let reloads = 0;
    for (let i = 1; i <= 3; i++) {
      await sleep(durationMs / 4);
      await stack.nginx!.reload();
      reloads++;
    }
    const load = await loading;
    // A retiring nginx worker closes the connections it accepted but has not read a request from;
    // a client sees that as a reset before any answer. That is between the client and nginx. What
    // must not happen is a request that reached the app and came back wrong: a 5xx, a cut or a
    // wrong answer, a timeout.
    const isReset = (kind: string) => kind === 'ECONNRESET' || kind === 'EPIPE';
    const resets = Object.entries(load.errorKinds).filter(([k]) => isReset(k)).reduce((n, [, c]) => n + c, 0);
    const broken = load.errors - resets;
    const failures = broken > 0 ? [`${broken} requests came back wrong across the reloads: ${load.samples.filter((x) => !/ECONNRESET|EPIPE/.test(x)).slice(0, 3).join('; ')}`] : [];
    const nginxErrors = stack.nginx!.errors().filter((line) => !/signal process started|reconfiguring/.test(line));
    if (nginxErrors.length) failures.push(`nginx logged: ${nginxErrors.slice(0, 3).join(' | ')}`);
    return { name: 'nginx reloaded 3 times', figures: { ...loadFigures(load), reloads, 'connections reset by a retiring nginx worker before any answer': resets, 'answers wrong, cut or 5xx': broken }, failures };
  } finally {
    await stack.stop();
  }
}

/** The app throws (sync or async) on about 1% of requests; every other request must be unaffected. */
export async function appThrows(options: FaultOptions = {}): Promise<FaultResult> {
  const durationMs = options.durationMs ?? 20_000;
  const stack = await startFcgiStack();
  try {
    // Half of the "fail" kind asks for a throw: 2 in 100 requests are that kind, so 1% throw.
    const load = await runMixedLoad({ baseUrl: stack.baseUrl, connections: options.connections ?? 32, durationMs, mix: { get: 68, post: 10, stream: 20, fail: 2 } });
    const failures: string[] = [];
    if (load.errors > 0) failures.push(`${load.errors} requests failed that should not have: ${load.samples.slice(0, 3).join('; ')}`);
    if (load.expectedFailures === 0) failures.push('no request asked for a failure');
    if (stack.runner.exitStatus()) failures.push('the responder exited');
    return {
      name: 'the app throws on 1% of requests',
      figures: { ...loadFigures(load), 'answered 500 as asked': load.expectedFailures, 'share that threw': `${((load.expectedFailures / Math.max(1, load.requests)) * 100).toFixed(2)}%` },
      failures,
    };
  } finally {
    await stack.stop();
  }
}

function get(port: number, target: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, '127.0.0.1');
    let text = '';
    socket.setTimeout(15_000, () => socket.destroy(new Error(`no answer for ${target}`)));
    socket.on('data', (c) => (text += c.toString('latin1')));
    socket.on('error', reject);
    socket.on('close', () => resolve({ status: Number(/^HTTP\/1\.1 (\d{3})/.exec(text)?.[1] ?? 0), body: text.slice(text.indexOf('\r\n\r\n') + 4) }));
    socket.write(`GET ${target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`);
  });
}

/** A script that forks a child (which sleeps 300 s) and exits: the children must not outlive their requests. */
export async function forkingScript(options: { requests?: number } = {}): Promise<FaultResult> {
  const requests = options.requests ?? 50;
  const stack = await startCgiStack({ maxScripts: 8 });
  const port = Number(new URL(stack.baseUrl).port);
  const marker = `m${process.pid}x${Date.now()}`;
  try {
    // 16 at a time: more would be turned away by the queue limit, which is not what is tested here.
    const answers: Array<{ status: number }> = [];
    let next = 0;
    await Promise.all(
      Array.from({ length: 16 }, async () => {
        while (next++ < requests) answers.push(await get(port, `/cgi-bin/forker?${marker}`));
      }),
    );
    const bad = answers.filter((a) => a.status !== 200).length;
    const rightAfter = processesMatching(`soak-orphan ${marker}`).length;
    const goneMs = await timeUntil(() => processesMatching(`soak-orphan ${marker}`).length === 0, 10_000, 20);
    const failures: string[] = [];
    if (bad) failures.push(`${bad} requests did not get a 200`);
    if (goneMs < 0) failures.push(`${processesMatching(`soak-orphan ${marker}`).length} forked children still alive after 10 s`);
    const zombies = [...readAllStats().values()].filter((s) => s.state === 'Z' && readCmdline(s.ppid).includes('spawner')).length;
    if (zombies) failures.push(`${zombies} zombies under the spawner`);
    return { name: 'a script forks children and exits', figures: { requests, 'children alive when the answers were in': rightAfter, 'all children gone after (ms)': goneMs, zombies }, failures };
  } finally {
    for (const pid of processesMatching(`soak-orphan ${marker}`)) process.kill(pid, 'SIGKILL');
    await stack.stop();
  }
}

/** A script printing forever to a client that reads a little and goes away: the script must be killed within a second. */
export async function printForever(options: { rounds?: number } = {}): Promise<FaultResult> {
  const rounds = options.rounds ?? 5;
  const stack = await startCgiStack({ maxScripts: 8 });
  const port = Number(new URL(stack.baseUrl).port);
  const times: number[] = [];
  const failures: string[] = [];
  try {
    for (let i = 0; i < rounds; i++) {
      const marker = `f${process.pid}x${Date.now()}x${i}`;
      await new Promise<void>((resolve, reject) => {
        const socket = net.connect(port, '127.0.0.1');
        let received = 0;
        socket.on('error', reject);
        socket.on('data', (c: Buffer) => {
          received += c.length;
          if (received >= 256 * 1024) {
            socket.destroy();
            resolve();
          }
        });
        socket.write(`GET /cgi-bin/forever?${marker} HTTP/1.1\r\nHost: x\r\n\r\n`);
      });
      const goneMs = await timeUntil(() => processesMatching(`soak-forever ${marker}`).length === 0, 10_000, 5);
      if (goneMs < 0) failures.push(`round ${i + 1}: the script was still running 10 s after its client left`);
      times.push(goneMs);
    }
    const worst = Math.max(...times);
    if (worst > 1000) failures.push(`a script outlived its client by ${worst} ms (at most 1000)`);
    return { name: 'a script prints forever to a client that went away', figures: { rounds, 'killed after (ms), worst': worst, 'killed after (ms), each': times.join(' ') }, failures };
  } finally {
    for (const pid of processesMatching('soak-forever f' + process.pid)) process.kill(pid, 'SIGKILL');
    await stack.stop();
  }
}

/** A small tmpfs for the spool directory: by mount (as root) or `sudo -n mount`; undefined when neither works. */
export function mountSmallTmpfs(sizeKiB: number): { dir: string; unmount(): void } | { unavailable: string } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'spool-full-'));
  const args = ['-t', 'tmpfs', '-o', `size=${sizeKiB}k,mode=0755`, 'tmpfs', dir];
  const attempts: Array<[string, string[]]> = process.getuid?.() === 0 ? [['mount', args]] : [['sudo', ['-n', 'mount', ...args]]];
  const errors: string[] = [];
  for (const [command, argv] of attempts) {
    try {
      execFileSync(command, argv, { stdio: 'pipe' });
      const sudo = command === 'sudo';
      return {
        dir,
        unmount() {
          try {
            execFileSync(sudo ? 'sudo' : 'umount', sudo ? ['-n', 'umount', dir] : [dir], { stdio: 'pipe' });
          } finally {
            fs.rmSync(dir, { recursive: true, force: true });
          }
        },
      };
    } catch (err) {
      errors.push(`${command}: ${((err as { stderr?: Buffer }).stderr?.toString() || (err as Error).message).trim()}`);
    }
  }
  fs.rmSync(dir, { recursive: true, force: true });
  return { unavailable: `cannot mount a tmpfs here (${errors.join('; ')})` };
}

/** Regular files under dir (the spooled bodies), recursively. */
function filesUnder(dir: string): string[] {
  return (fs.readdirSync(dir, { recursive: true, withFileTypes: true }) as fs.Dirent[]).filter((e) => e.isFile()).map((e) => path.join(e.parentPath ?? e.path, e.name));
}

function chunkedPost(port: number, target: string, bytes: number): Promise<{ status: number; ms: number }> {
  const started = performance.now();
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, '127.0.0.1');
    let text = '';
    socket.setTimeout(20_000, () => socket.destroy(new Error('no answer within 20 s')));
    socket.on('data', (c) => (text += c.toString('latin1')));
    socket.on('error', (err: NodeJS.ErrnoException) => (text ? undefined : reject(err)));
    socket.on('close', () => resolve({ status: Number(/^HTTP\/1\.1 (\d{3})/.exec(text)?.[1] ?? 0), ms: Math.round(performance.now() - started) }));
    socket.write(`POST ${target} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n`);
    const piece = Buffer.concat([Buffer.from('10000\r\n'), Buffer.alloc(65536, 0x61), Buffer.from('\r\n')]);
    let left = Math.ceil(bytes / 65536);
    // One piece per turn of the event loop, the socket read in between, and none once an answer
    // has come: the server may answer (507) and close before the whole body is sent, and a write
    // after its close fails with EPIPE, which destroys the socket with that answer still unread
    // unless it was read before.
    const pump = () => {
      if (socket.destroyed || text) return;
      if (left === 0) return void socket.write('0\r\n\r\n');
      left--;
      if (socket.write(piece)) setImmediate(pump);
      else socket.once('drain', pump);
    };
    pump();
  });
}

/** A chunked body larger than the spool directory's disk: a clear 5xx, and no file left behind. */
export async function diskFull(): Promise<FaultResult> {
  const name = 'the disk fills while a chunked body is spooled';
  const mount = mountSmallTmpfs(2048);
  if ('unavailable' in mount) return { name, figures: {}, failures: [], skipped: mount.unavailable };
  let stack: SoakStack | undefined;
  try {
    stack = await startCgiStack({ args: ['--spool-dir', mount.dir] });
    const port = Number(new URL(stack.baseUrl).port);
    const full = await chunkedPost(port, '/cgi-bin/echo', 8 * 1024 * 1024);
    await sleep(200);
    const left = filesUnder(mount.dir);
    // A body that fits in memory does not need the disk, and one that fits on it works again.
    const small = await chunkedPost(port, '/cgi-bin/echo', 512 * 1024);
    const fits = await chunkedPost(port, '/cgi-bin/echo', 1536 * 1024);
    const failures: string[] = [];
    if (full.status < 500 || full.status > 599) failures.push(`the oversized body got ${full.status || 'no answer'}, not a 5xx`);
    if (left.length) failures.push(`files left in the spool directory: ${left.join(', ')}`);
    if (small.status !== 200) failures.push(`a small chunked body then got ${small.status}`);
    if (fits.status !== 200) failures.push(`a body that fits the disk then got ${fits.status}`);
    return { name, figures: { 'status for 8 MiB on a 2 MiB disk': full.status, 'answered after (ms)': full.ms, 'files left': left.length, 'then 512 KiB': small.status, 'then 1.5 MiB': fits.status }, failures };
  } finally {
    await stack?.stop();
    mount.unmount();
  }
}

export const faults = {
  'kill-worker': killWorker,
  'nginx-reload': nginxReload,
  'app-throws': appThrows,
  'forking-script': forkingScript,
  'print-forever': printForever,
  'disk-full': diskFull,
} as const;

export function formatFault(r: FaultResult): string {
  const verdict = r.skipped ? `skipped: ${r.skipped}` : r.failures.length ? `FAIL: ${r.failures.join('; ')}` : 'pass';
  const figures = Object.entries(r.figures).map(([k, v]) => `    ${k}: ${v}`);
  return [`${r.name}: ${verdict}`, ...figures].join('\n');
}

async function main(argv: string[]): Promise<number> {
  const values = parseScriptArgs(
    {
      script: 'faults',
      summary: 'Faults under load, each checked against what a user must see.',
      details: `faults: ${Object.keys(faults).join(', ')}`,
      flags: {
        seconds: { type: 'string', valueName: 'N', default: '30', description: 'how long each load lasts' },
        connections: { type: 'string', valueName: 'N', default: '32', description: 'load connections' },
        only: { type: 'string', valueName: 'NAME', multiple: true, description: 'run only this fault' },
      },
    },
    argv,
  ) as { seconds: string; connections: string; only?: string[] };
  const durationMs = numberFlag(values, 'seconds') * 1000;
  const connections = intFlag(values, 'connections', 1);
  const names = (values.only ?? Object.keys(faults)) as Array<keyof typeof faults>;
  let failed = 0;
  for (const name of names) {
    const fault = faults[name];
    if (!fault) throw new TypeError(`unknown fault ${name} (${Object.keys(faults).join(', ')})`);
    const result = await (fault as (o: object) => Promise<FaultResult>)({ durationMs, connections, requests: 200, rounds: 10 });
    process.stdout.write(formatFault(result) + '\n');
    if (result.failures.length) failed++;
  }
  return failed ? 1 : 0;
}

if (import.meta.url === `file://${process.argv[1]}`) {
  main(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (err: Error) => {
      process.stderr.write(`faults: ${err.stack ?? err.message}\n`);
      process.exit(2);
    },
  );
}
