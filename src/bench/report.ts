// The benchmark's results: the JSON document, the terminal table with ratios against a baseline, and the plain-words headline.
import type { LatencySummary } from './histogram.ts';

export type Mode = 'cgi' | 'fastcgi' | 'http';

/** One target at one connection count, combined over its rounds. The JSON shape is part of the interface. */
export interface BenchResult {
  target: string;
  mode: Mode;
  connections: number;
  requests: number;
  errors: number;
  rps: number;
  latencyMs: LatencySummary;
  cpuMsPerRequest: number;
  peakRssMb: number;
}

export interface MachineInfo {
  platform: string;
  kernel: string;
  cpuModel: string;
  cpus: number;
  memoryMb: number;
  /** 1, 5 and 15 minute load averages when the run started: other work on the machine skews results. */
  loadAverage: number[];
  node: string;
  /** What ran where: the pinning plan and the CPUs each side actually had. */
  pinning: { enabled: boolean; description: string; loadGenerator: string; servers: string };
}

export interface TargetInfo {
  name: string;
  mode: Mode;
  description: string;
  url: string;
  /** CPUs the target's processes were allowed to run on. */
  cpus: string;
}

export interface RunInfo {
  command: string;
  startedAt: string;
  durationSeconds: number;
  rounds: number;
  warmupSeconds: number;
  connections: number[];
  /** Requests per second in open loop; null for closed loop. */
  rate: number | null;
  baseline: string | undefined;
  targets: TargetInfo[];
  skipped: { target: string; reason: string }[];
  /** Per target and connection count: requests never sent in open loop (their latency is a lower bound). */
  unsent: Record<string, number>;
  errorKinds: Record<string, Record<string, number>>;
  /** Every process seen serving a target; none may be left when the run ends. */
  pids: number[];
}

export interface BenchReport {
  machine: MachineInfo;
  results: BenchResult[];
  run: RunInfo;
}

/** 0.186 → "186 µs", 12.34 → "12.3 ms", 1234 → "1.23 s". */
export function formatMs(ms: number): string {
  if (!Number.isFinite(ms)) return '-';
  if (ms < 1) return `${Math.round(ms * 1000)} µs`;
  if (ms < 10) return `${ms.toFixed(2)} ms`;
  if (ms < 100) return `${ms.toFixed(1)} ms`;
  if (ms < 1000) return `${Math.round(ms)} ms`;
  return `${(ms / 1000).toFixed(2)} s`;
}

export function formatRate(rps: number): string {
  if (rps >= 100) return Math.round(rps).toLocaleString('en-US');
  if (rps >= 10) return rps.toFixed(1);
  return rps.toFixed(2);
}

function formatRatio(r: number): string {
  if (!Number.isFinite(r) || r <= 0) return '-';
  if (r >= 100) return `${Math.round(r)}×`;
  if (r >= 10) return `${r.toFixed(1)}×`;
  if (r >= 0.01) return `${r.toFixed(2)}×`;
  // CGI against node:http is a thousandth; "0.00×" would hide it.
  return `${r.toPrecision(1)}×`;
}

/** The baseline's result at the same connection count. */
export function baselineFor(results: readonly BenchResult[], baseline: string | undefined, connections: number): BenchResult | undefined {
  return results.find((r) => r.target === baseline && r.connections === connections);
}

/** Columns of the terminal table, right-aligned numbers, grouped by connection count. */
export function terminalTable(results: readonly BenchResult[], baseline: string | undefined): string {
  const header = ['target', 'mode', 'conns', 'req/s', 'vs base', 'p50', 'p90', 'p99', 'p99.9', 'max', 'p50 vs base', 'errors', 'cpu/req', 'peak RSS'];
  const rows: string[][] = [];
  const byConnections = [...new Set(results.map((r) => r.connections))].sort((a, b) => a - b);
  for (const c of byConnections) {
    const base = baselineFor(results, baseline, c);
    for (const r of results.filter((x) => x.connections === c)) {
      rows.push([
        r.target,
        r.mode,
        String(r.connections),
        formatRate(r.rps),
        base ? formatRatio(r.rps / base.rps) : '-',
        formatMs(r.latencyMs.p50),
        formatMs(r.latencyMs.p90),
        formatMs(r.latencyMs.p99),
        formatMs(r.latencyMs.p999),
        formatMs(r.latencyMs.max),
        base ? formatRatio(r.latencyMs.p50 / base.latencyMs.p50) : '-',
        String(r.errors),
        formatMs(r.cpuMsPerRequest),
        `${r.peakRssMb.toFixed(1)} MB`,
      ]);
    }
    rows.push([]);
  }
  rows.pop();
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((row) => (row[i] ?? '').length)));
  const line = (cells: string[]) => cells.map((cell, i) => (i < 2 ? cell.padEnd(widths[i]!) : cell.padStart(widths[i]!))).join('  ').trimEnd();
  const out = [line(header), widths.map((w) => '─'.repeat(w)).join('  ')];
  for (const row of rows) out.push(row.length ? line(row) : '');
  return out.join('\n') + '\n';
}

/** A markdown version of the table, for the README. */
export function markdownTable(results: readonly BenchResult[], baseline: string | undefined): string {
  const out = [
    '| target | mode | conns | req/s | vs base | p50 | p90 | p99 | p99.9 | max | errors | CPU/req | peak RSS |',
    '|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|',
  ];
  for (const r of results) {
    const base = baselineFor(results, baseline, r.connections);
    out.push(
      `| ${r.target} | ${r.mode} | ${r.connections} | ${formatRate(r.rps)} | ${base ? formatRatio(r.rps / base.rps) : '-'} | ${formatMs(r.latencyMs.p50)} | ${formatMs(r.latencyMs.p90)} | ${formatMs(r.latencyMs.p99)} | ${formatMs(r.latencyMs.p999)} | ${formatMs(r.latencyMs.max)} | ${r.errors} | ${formatMs(r.cpuMsPerRequest)} | ${r.peakRssMb.toFixed(1)} MB |`,
    );
  }
  return out.join('\n') + '\n';
}

function find(results: readonly BenchResult[], target: string, connections: number): BenchResult | undefined {
  return results.find((r) => r.target === target && r.connections === connections);
}

/**
 * What the numbers mean, in sentences, from this run only: the cost of a process start at the
 * median (at the lowest connection count, where nothing queues), and the same app as CGI and as
 * FastCGI at the highest.
 */
export function headline(results: readonly BenchResult[], rate: number | null = null): string[] {
  const lines: string[] = [];
  if (results.length === 0) return lines;
  if (rate) return openLoopHeadline(results, rate);
  const cs = [...new Set(results.map((r) => r.connections))].sort((a, b) => a - b);
  const low = cs[0]!;
  const high = cs.at(-1)!;
  const cgi = [
    ['cgi-sh', 'sh'],
    ['cgi-mjs', 'Node (.mjs)'],
    ['cgi-ts', 'Node with the TypeScript loader (.ts)'],
  ]
    .map(([t, label]) => [find(results, t!, low), label] as const)
    .filter(([r]) => r);
  const viaServe = find(results, 'fcgi-serve', low);
  const viaNginx = find(results, 'fcgi-nginx-unix', low);
  if (cgi.length) {
    const parts = cgi.map(([r, label]) => `${formatMs(r!.latencyMs.p50)} for ${label}`);
    const answers = [viaServe && `${formatMs(viaServe.latencyMs.p50)} through serve`, viaNginx && `${formatMs(viaNginx.latencyMs.p50)} behind nginx`].filter(Boolean);
    const tail = answers.length ? `; the persistent responder running the same fcgi/hello.ts answers in ${joinWords(answers as string[])}` : '';
    lines.push(`At ${low} connection${low === 1 ? '' : 's'}, a process per request costs ${joinWords(parts)} at the median${tail}.`);
  }
  const cgiTs = find(results, 'cgi-ts', high);
  const fcgiTs = find(results, 'fcgi-serve', high);
  if (cgiTs && fcgiTs) {
    lines.push(
      `The same app (fcgi/hello.ts) at ${high} connections: as FastCGI it serves ${formatRatio(fcgiTs.rps / cgiTs.rps)} the requests/s of CGI ` +
        `(${formatRate(fcgiTs.rps)} against ${formatRate(cgiTs.rps)}) with a median latency ${formatRatio(cgiTs.latencyMs.p50 / fcgiTs.latencyMs.p50)} lower, ` +
        `and uses ${formatMs(fcgiTs.cpuMsPerRequest)} of server CPU per request against ${formatMs(cgiTs.cpuMsPerRequest)}.`,
    );
  }
  const floor = find(results, 'node-http', low);
  if (floor && viaNginx) {
    const added = viaNginx.latencyMs.p50 - floor.latencyMs.p50;
    lines.push(
      added > 0
        ? `nginx and FastCGI in front of the persistent app add ${formatMs(added)} at the median over a plain node:http server (${formatMs(floor.latencyMs.p50)}).`
        : `nginx and FastCGI in front of the persistent app measured no slower at the median than a plain node:http server (${formatMs(viaNginx.latencyMs.p50)} against ${formatMs(floor.latencyMs.p50)}): the difference is below this run's noise.`,
    );
  }
  return lines;
}

/** In open loop the question is which targets kept up with the offered rate, and what queueing did to the rest. */
function openLoopHeadline(results: readonly BenchResult[], rate: number): string[] {
  const lines: string[] = [];
  for (const c of [...new Set(results.map((r) => r.connections))].sort((a, b) => a - b)) {
    const rows = results.filter((r) => r.connections === c);
    // Within 5 % of the offered rate counts as keeping up.
    const kept = rows.filter((r) => r.rps >= rate * 0.95);
    const behind = rows.filter((r) => r.rps < rate * 0.95);
    const parts: string[] = [];
    if (kept.length) parts.push(`${joinWords(kept.map((r) => `${r.target} (p99 ${formatMs(r.latencyMs.p99)})`))} kept up`);
    if (behind.length) parts.push(`${joinWords(behind.map((r) => `${r.target} (${formatRate(r.rps)}/s, p50 ${formatMs(r.latencyMs.p50)})`))} fell behind, and their latency is mostly time spent waiting in the queue`);
    lines.push(`Offered ${formatRate(rate)} requests/s on ${c} connection${c === 1 ? '' : 's'}: ${parts.join('; ')}.`);
  }
  return lines;
}

function joinWords(parts: string[]): string {
  if (parts.length <= 1) return parts.join('');
  return `${parts.slice(0, -1).join(', ')} and ${parts.at(-1)}`;
}
