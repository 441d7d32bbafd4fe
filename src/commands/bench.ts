// `cgi-runner bench`: starts every target, measures them in alternating rounds, and prints, writes JSON and renders HTML.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Command } from '../command.ts';
import { renderHtml } from '../bench/html.ts';
import { pinPid, planPinning, describeAffinity } from '../bench/pinning.ts';
import { procAvailable } from '../bench/proc-stats.ts';
import { formatClock, Progress } from '../bench/progress.ts';
import { headline, terminalTable, type BenchReport, type MachineInfo } from '../bench/report.ts';
import { planSchedule, runRounds } from '../bench/rounds.ts';
import { startStack } from '../bench/stack.ts';
import { selectTargets, TARGETS } from '../bench/targets.ts';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

type Values = Record<string, string | boolean | string[] | undefined>;

/** The baseline of the ratios: the floor with no gateway, else the persistent responder, else the first target. */
const BASELINE_ORDER = ['node-http', 'fcgi-serve', 'fcgi-nginx-unix'];

function parseConnections(raw: string): number[] {
  const list = raw.split(',').map((s) => Number(s.trim()));
  if (!list.length || list.some((n) => !Number.isInteger(n) || n < 1 || n > 10_000)) {
    throw new TypeError(`--connections must be a comma-separated list of positive integers, got ${JSON.stringify(raw)}`);
  }
  return [...new Set(list)];
}

function parsePositive(values: Values, name: string): number | undefined {
  const raw = values[name];
  if (raw === undefined) return undefined;
  const n = Number(raw);
  if (!Number.isFinite(n) || n <= 0) throw new TypeError(`--${name} must be a positive number, got ${JSON.stringify(raw)}`);
  return n;
}

function machineInfo(pinning: MachineInfo['pinning'], loadAverage: number[]): MachineInfo {
  const cpus = os.cpus();
  return {
    platform: `${os.type()} ${os.release()}`.split(' ')[0]!,
    kernel: os.release(),
    cpuModel: cpus[0]?.model.trim() ?? 'unknown',
    // os.cpus(), not availableParallelism(): this process is pinned to one CPU by now.
    cpus: os.cpus().length,
    memoryMb: Math.round(os.totalmem() / (1024 * 1024)),
    loadAverage: loadAverage.map((n) => Math.round(n * 100) / 100),
    node: process.version,
    pinning,
  };
}

function commandLine(values: Values): string {
  const argv = process.argv.slice(2);
  if (argv[0] === 'bench') return `cgi-runner ${argv.join(' ')}`;
  const flags = ['duration', 'connections', 'targets', 'rate', 'json', 'html'].flatMap((f) => (values[f] === undefined ? [] : [`--${f} ${values[f]}`]));
  return ['cgi-runner bench', ...flags].join(' ');
}

export const benchCommand: Command = {
  name: 'bench',
  summary: 'Latency benchmark: CGI (a process per request) against FastCGI (a persistent responder), side by side, against nginx + php-fpm, fcgiwrap, Apache mod_cgid and plain node:http. Starts everything it measures on loopback and free ports, and stops it all afterwards.',
  details: [
    'targets:',
    ...TARGETS.map((t) => `  ${t.name.padEnd(17)} ${t.mode.padEnd(8)} ${t.description}`),
    '',
    'Each target and connection count is measured for --duration seconds in total, split into up to 3',
    'rounds run in alternation (A B A B), each after a short warm-up; the report shows the median of the rounds.',
    'Latency is kept in an HDR histogram at nanosecond resolution. With --rate it is measured from each',
    "request's intended send time (coordinated omission corrected, as wrk2 does), so queueing shows.",
    'On 2 or more CPUs the load generator is pinned to the last CPU and the servers to the others',
    '(taskset); CGI_RUNNER_BENCH_PIN=0 turns that off. Ctrl-C stops every process it started.',
  ].join('\n'),
  flags: {
    duration: { type: 'string', valueName: 'SECONDS', default: '3', description: 'measured seconds per target and connection count, over all rounds' },
    connections: { type: 'string', valueName: 'LIST', default: '1,8,32', description: 'connection counts, comma-separated' },
    targets: { type: 'string', valueName: 'LIST', description: 'targets to run, comma-separated (default: every one whose peer is installed)' },
    rate: { type: 'string', valueName: 'N', description: 'open loop at N requests/s in total (default: closed loop)' },
    json: { type: 'string', valueName: 'FILE', description: 'write the results as JSON' },
    html: { type: 'string', valueName: 'FILE', description: 'write a self-contained HTML report with charts' },
  },
  async run(values) {
    const duration = parsePositive(values, 'duration')!;
    const rate = parsePositive(values, 'rate');
    const connections = parseConnections(values.connections as string);
    const specs = selectTargets(values.targets as string | undefined);
    if (!procAvailable()) throw new Error('bench: needs Linux /proc to measure server CPU and memory');
    const schedule = planSchedule(duration);
    const progress = new Progress();
    const say = (line: string) => progress.log(`bench: ${line}`);

    const controller = new AbortController();
    const onSignal = (sig: NodeJS.Signals) => {
      if (!controller.signal.aborted) say(`${sig}: stopping every process started`);
      controller.abort(new Error(sig));
    };
    process.on('SIGINT', onSignal);
    process.on('SIGTERM', onSignal);

    // Other work on the machine moves every number; say so rather than print noise as fact.
    const loadAtStart = os.loadavg();
    const [load1] = loadAtStart;
    if (load1! > 0.5) say(`the machine is busy (load average ${load1!.toFixed(2)} before starting): expect noisy results`);

    const plan = planPinning();
    // Pin the load generator (this process, every thread) first: children then start on its CPU
    // and are moved to the server CPUs as soon as they are up.
    if (plan.enabled && !pinPid(process.pid, plan.loadCpus)) plan.enabled = false;
    const serverCpuCount = plan.enabled ? plan.serverCpus.split(',').length : os.availableParallelism();

    const stack = await startStack(specs, {
      root: ROOT,
      serverCpus: plan.enabled ? plan.serverCpus : undefined,
      serverCpuCount,
      signal: controller.signal,
      log: say,
    });
    try {
      for (const s of stack.skipped) say(`skipped ${s.target}: ${s.reason}`);
      if (controller.signal.aborted) return 130;
      if (!stack.targets.length) {
        say('no target could run');
        return 1;
      }
      const loadCpus = describeAffinity([process.pid]);
      const pinning: MachineInfo['pinning'] = {
        enabled: plan.enabled,
        description: plan.enabled ? `load generator (this process) on CPU ${loadCpus}, servers on CPU ${plan.serverCpus}` : `not pinned: ${plan.reason}; load generator and servers share CPUs ${loadCpus}`,
        loadGenerator: loadCpus,
        servers: plan.enabled ? plan.serverCpus : loadCpus,
      };
      say(pinning.description);
      for (const t of stack.targets) say(`${t.name}: ${t.url} (CPUs ${t.cpus})`);
      const steps = schedule.rounds * connections.length * stack.targets.length;
      const plural = (n: number, word: string) => `${n} ${word}${n === 1 ? '' : 's'}`;
      say(
        `${plural(stack.targets.length, 'target')} × ${plural(connections.length, 'connection count')} × ${plural(schedule.rounds, 'round')} of ${schedule.roundSeconds.toFixed(2)} s ` +
          `(+${schedule.warmupSeconds} s warm-up) ≈ ${formatClock(steps * (schedule.roundSeconds + schedule.warmupSeconds))} plus the time slow targets take to answer, ` +
          (rate ? `open loop at ${rate} req/s` : 'closed loop'),
      );
      const startedAt = new Date().toISOString();
      const outcome = await runRounds({ targets: stack.targets, connections, schedule, rate, signal: controller.signal, progress, seen: stack.seen });
      if (outcome.aborted) return 130;

      const names = stack.targets.map((t) => t.name);
      const baseline = BASELINE_ORDER.find((b) => names.includes(b)) ?? names[0];
      const report: BenchReport = {
        machine: machineInfo(pinning, loadAtStart),
        results: outcome.results,
        run: {
          command: commandLine(values),
          startedAt,
          durationSeconds: duration,
          rounds: schedule.rounds,
          warmupSeconds: schedule.warmupSeconds,
          connections,
          rate: rate ?? null,
          baseline,
          targets: stack.targets.map((t) => ({ name: t.name, mode: t.mode, description: t.description, url: t.url, cpus: t.cpus })),
          skipped: stack.skipped,
          unsent: outcome.unsent,
          errorKinds: outcome.errorKinds,
          pids: [...stack.seen.keys()],
        },
      };
      process.stdout.write('\n' + terminalTable(report.results, baseline));
      process.stdout.write(`\nratios against ${baseline} at the same connection count; latency from ${rate ? 'intended send time (open loop)' : 'send time (closed loop)'}; medians of ${schedule.rounds} round(s)\n`);
      for (const [k, n] of Object.entries(outcome.unsent)) process.stdout.write(`${k}: ${n} requests never sent (every connection busy); their latency is counted as a lower bound\n`);
      for (const [k, kinds] of Object.entries(outcome.errorKinds)) process.stdout.write(`${k} errors: ${Object.entries(kinds).map(([kind, n]) => `${n} × ${kind}`).join(', ')}\n`);
      const lines = headline(report.results, report.run.rate);
      if (lines.length) process.stdout.write('\n' + lines.join('\n') + '\n');
      if (typeof values.json === 'string') {
        await fs.promises.writeFile(values.json, JSON.stringify(report, null, 2) + '\n');
        say(`wrote ${values.json}`);
      }
      if (typeof values.html === 'string') {
        await fs.promises.writeFile(values.html, renderHtml(report));
        say(`wrote ${values.html}`);
      }
      return 0;
    } finally {
      await stack.stop().catch((err: Error) => say(err.message));
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
    }
  },
};
