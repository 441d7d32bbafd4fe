// `npm run soak -- --minutes 10`: mixed load for a long time against the FastCGI responder behind nginx and against `serve`, checking errors, memory, file descriptors and leftover processes.
import fs from 'node:fs';
import os from 'node:os';
import { numberFlag, parseScriptArgs } from '../command.ts';
import { setTimeout as sleep } from 'node:timers/promises';
import { processGroupMembers } from '../peers/index.ts';
import { runMixedLoad, type MixedLoadResult, type RequestKind } from './mixed-load.ts';
import { MachineWatcher, ProcessWatcher, countFds, descendants, type WatchSummary } from './stats.ts';
import { startCgiStack, startFcgiStack, type SoakStack } from './stack.ts';

export type SoakMode = 'fcgi' | 'cgi';

export interface SoakOptions {
  mode: SoakMode;
  durationMs: number;
  connections: number;
  /** Samples before this are left out of the memory and descriptor figures. Default: a tenth of the run, at most 60 s. */
  warmupMs?: number;
  /** Default 1 s, or a tenth of the run when shorter. */
  sampleMs?: number;
  mix?: Partial<Record<RequestKind, number>>;
  postBytes?: number;
  /** Most RSS growth accepted after warm-up. Default 0.10. */
  maxRssGrowth?: number;
  /** Append the runner's error log to this file. */
  logFile?: string;
  onProgress?: (line: string) => void;
}

export interface SoakReport {
  mode: SoakMode;
  connections: number;
  durationMs: number;
  warmupMs: number;
  load: MixedLoadResult;
  watch: WatchSummary;
  /** After the load, once its children are gone (or 10 s passed): what the runner still has, and how long that took. */
  settled: { children: number; zombies: number; fds: number; ms: number };
  /** Descriptors open before the load started. */
  fdsBefore: number;
  /** Processes of the runner's group still alive after it was stopped. */
  leftovers: number;
  /** Set when the runner exited on its own during the run: how, and the end of its error log. */
  runnerDied?: { exit: string; logTail: string };
  /** The machine during the run: load averages, the share of its CPU that was busy and that this run used, and what else ran. */
  machine: { cores: number; loadBefore: number[]; loadAfter: number[]; busy: number; ours: number; otherBusy: Array<{ command: string; cpuSeconds: number }> };
  /** Problems found; empty means the run passed. */
  failures: string[];
}

export async function runSoak(options: SoakOptions): Promise<SoakReport> {
  const { mode, durationMs, connections } = options;
  const warmupMs = options.warmupMs ?? Math.min(60_000, durationMs / 10);
  const sampleMs = options.sampleMs ?? Math.min(1000, Math.max(100, durationMs / 10));
  const maxRssGrowth = options.maxRssGrowth ?? 0.1;
  const loadBefore = os.loadavg();
  const machine = new MachineWatcher();
  machine.start();
  const stack: SoakStack = mode === 'fcgi' ? await startFcgiStack({ logFile: options.logFile }) : await startCgiStack({ maxScripts: connections, logFile: options.logFile });
  let report: SoakReport | undefined;
  try {
    const watcher = new ProcessWatcher(stack.watchedPids, () => [stack.runner.pid]);
    watcher.start(sampleMs);
    const load = await runMixedLoad({
      baseUrl: stack.baseUrl,
      connections,
      durationMs,
      mix: options.mix ?? { get: 70, post: 10, stream: 20 },
      postBytes: options.postBytes,
      onProgress: options.onProgress
        ? (p) => {
            const last = watcher.samples.at(-1);
            options.onProgress!(
              `${mode} ${(p.elapsedMs / 1000).toFixed(0)}/${(durationMs / 1000).toFixed(0)} s  ${p.requests} requests  ${p.errors} errors` +
                (last ? `  rss ${(last.rssBytes / 2 ** 20).toFixed(1)} MiB  fds ${last.fds}  children ${last.children}` : ''),
            );
          }
        : undefined,
    });
    watcher.stop();
    const watch = watcher.summary(warmupMs);
    const exit = stack.runner.exitStatus();
    const runnerDied = exit ? { exit: exit.signal ? `signal ${exit.signal}` : `code ${exit.code}`, logTail: stack.runner.outputTail(3000) } : undefined;
    // Scripts whose answer is complete may still be exiting: give them up to 10 s (on a loaded machine).
    const settleStart = performance.now();
    let settled: SoakReport['settled'];
    for (;;) {
      const after = descendants([stack.runner.pid]);
      const helperOrWorkers = new Set(stack.watchedPids());
      settled = {
        children: after.live.filter((s) => !helperOrWorkers.has(s.pid)).length,
        zombies: after.zombies.length,
        fds: stack.watchedPids().reduce((n, pid) => n + countFds(pid), 0),
        ms: Math.round(performance.now() - settleStart),
      };
      if ((settled.children === 0 && settled.zombies === 0) || settled.ms > 10_000) break;
      await sleep(100);
    }
    const pgid = stack.runner.pgid;
    await stack.stop();
    await sleep(200);
    const leftovers = processGroupMembers(pgid).length;

    const usage = machine.stop();

    const failures: string[] = [];
    if (runnerDied) failures.push(`the runner exited during the run (${runnerDied.exit})`);
    if (load.errors > 0) failures.push(`${load.errors} errors: ${JSON.stringify(load.errorKinds)}`);
    if (load.requests === 0) failures.push('no request was answered');
    if (watch.rss.growth > maxRssGrowth) failures.push(`RSS grew ${(watch.rss.growth * 100).toFixed(1)}% after warm-up (at most ${maxRssGrowth * 100}%)`);
    // Under load the descriptors follow the connections nginx keeps open, which vary; a leak shows
    // when idle again: more open than before the load (or than the fewest seen during it).
    const idleBefore = Math.max(watcher.samples[0]?.fds ?? 0, watch.fds.min);
    if (settled.fds > idleBefore + 8) failures.push(`${settled.fds} file descriptors open when idle after the load, ${idleBefore} before`);
    if (watch.lingeringZombies > 0) failures.push(`${watch.lingeringZombies} zombie sightings that lasted a sample interval`);
    if (settled.zombies > 0) failures.push(`${settled.zombies} zombies after the load`);
    if (settled.children > 0) failures.push(`${settled.children} child processes still running after the load`);
    if (leftovers > 0) failures.push(`${leftovers} processes of the runner's group left after it stopped`);
    report = {
      mode,
      connections,
      durationMs,
      warmupMs,
      load,
      watch,
      settled,
      fdsBefore: watcher.samples[0]?.fds ?? 0,
      leftovers,
      runnerDied,
      machine: { cores: os.availableParallelism(), loadBefore, loadAfter: os.loadavg(), busy: usage.busy, ours: usage.ours, otherBusy: usage.others.slice(0, 8) },
      failures,
    };
  } finally {
    if (!report) {
      machine.stop();
      await stack.stop().catch(() => {});
    }
  }
  return report;
}

const MiB = 2 ** 20;

export function formatReport(r: SoakReport): string {
  const l = r.load;
  const w = r.watch;
  const pct = (x: number) => `${x >= 0 ? '+' : ''}${(x * 100).toFixed(1)}%`;
  const kinds = Object.entries(l.byKind)
    .filter(([, k]) => k.requests > 0)
    .map(([name, k]) => `${name} ${k.requests}${k.errors ? ` (${k.errors} errors)` : ''}`)
    .join(', ');
  return [
    `${r.mode === 'fcgi' ? 'FastCGI responder behind nginx' : 'CGI (serve)'}: ${r.connections} connections, ${(r.durationMs / 60_000).toFixed(1)} min, warm-up ${(r.warmupMs / 1000).toFixed(0)} s`,
    `  requests   ${l.requests} (${kinds}), ${l.rps.toFixed(0)}/s, ${(l.bytes / MiB / 1024).toFixed(2)} GiB moved`,
    `  errors     ${l.errors}${l.errors ? ' ' + JSON.stringify(l.errorKinds) : ''}`,
    `  latency    p50 ${l.latency.p50.toFixed(1)} ms, p99 ${l.latency.p99.toFixed(1)} ms, max ${l.latency.max.toFixed(0)} ms`,
    `  RSS        ${(w.rss.baseline / MiB).toFixed(1)} MiB after warm-up, ${(w.rss.final / MiB).toFixed(1)} MiB at the end (${pct(w.rss.growth)}); range ${(w.rss.min / MiB).toFixed(1)}-${(w.rss.max / MiB).toFixed(1)} MiB over ${w.samples} samples`,
    `  fds        ${r.fdsBefore} before the load, ${r.settled.fds} idle after it; under load ${w.fds.baseline} after warm-up, ${w.fds.final} at the end, range ${w.fds.min}-${w.fds.max}`,
    `  processes  zombies lingering ${w.lingeringZombies} (most in one sample ${w.maxZombies}), after the load ${r.settled.zombies}; children left ${r.settled.children} (${r.settled.ms} ms after the load); left after stop ${r.leftovers}`,
    `  machine    ${r.machine.cores} cores, CPU ${(r.machine.busy * 100).toFixed(0)}% busy (this run ${(r.machine.ours * 100).toFixed(0)}%, others ${Math.max(0, (r.machine.busy - r.machine.ours) * 100).toFixed(0)}%); load average ${r.machine.loadBefore.map((x) => x.toFixed(1)).join(' ')} before, ${r.machine.loadAfter.map((x) => x.toFixed(1)).join(' ')} after`,
    ...(r.machine.otherBusy.length ? [`  also ran   ${r.machine.otherBusy.map((o) => `${o.command.slice(0, 70)} (${o.cpuSeconds} s CPU)`).join('\n             ')}`] : []),
    ...(r.runnerDied ? [`  runner log ${r.runnerDied.logTail.split('\n').join('\n             ')}`] : []),
    `  verdict    ${r.failures.length ? 'FAIL: ' + r.failures.join('; ') : 'pass'}`,
  ].join('\n');
}

async function main(argv: string[]): Promise<number> {
  const values = parseScriptArgs(
    {
      script: 'soak',
      summary:
        'Mixed load (70% GET, 10% 1 MiB POST, 20% streamed answers), every answer checked, for the given time per mode:\n' +
        'the FastCGI responder (src/soak/app.ts) behind nginx, then `serve` running the same routes as Perl CGI scripts.\n' +
        'Passes with zero errors, RSS within 10% of its post-warm-up level, no zombie and no process left over.',
      flags: {
        minutes: { type: 'string', valueName: 'N', default: '10', description: 'length of each mode' },
        seconds: { type: 'string', valueName: 'N', description: 'instead of --minutes' },
        mode: { type: 'string', valueName: 'MODE', default: 'both', description: 'fcgi, cgi or both' },
        'fcgi-connections': { type: 'string', valueName: 'N', default: '64', description: 'connections through nginx to the responder' },
        'cgi-connections': { type: 'string', valueName: 'N', default: '16', description: 'connections to `serve`' },
        json: { type: 'string', valueName: 'FILE', description: 'write the reports as JSON' },
        log: { type: 'string', valueName: 'FILE', description: 'write the servers\' output here' },
      },
    },
    argv,
  ) as Record<string, string | undefined>;
  const durationMs = values.seconds !== undefined ? numberFlag(values, 'seconds') * 1000 : numberFlag(values, 'minutes') * 60_000;
  const modes: SoakMode[] = values.mode === 'both' ? ['fcgi', 'cgi'] : [values.mode as SoakMode];
  if (!modes.every((m) => m === 'fcgi' || m === 'cgi')) throw new TypeError('--mode must be fcgi, cgi or both');
  const reports: SoakReport[] = [];
  const tty = process.stderr.isTTY;
  for (const mode of modes) {
    const connections = Number(mode === 'fcgi' ? values['fcgi-connections'] : values['cgi-connections']);
    let lastLine = 0;
    const report = await runSoak({
      mode,
      durationMs,
      connections,
      logFile: values.log,
      onProgress: (line) => {
        // A line every 30 s when not on a terminal, so a log file stays readable.
        if (tty) process.stderr.write(`\r${line}\x1b[K`);
        else if (Date.now() - lastLine >= 30_000) {
          lastLine = Date.now();
          process.stderr.write(`${new Date().toISOString()} ${line}\n`);
        }
      },
    });
    if (tty) process.stderr.write('\r\x1b[K');
    process.stdout.write(formatReport(report) + '\n\n');
    reports.push(report);
  }
  if (values.json) fs.writeFileSync(values.json, JSON.stringify(reports, null, 2) + '\n');
  return reports.every((r) => r.failures.length === 0) ? 0 : 1;
}

if (import.meta.url === `file://${process.argv[1]}`) {
  main(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (err: Error) => {
      process.stderr.write(`soak: ${err.message}\n`);
      process.exit(2);
    },
  );
}
