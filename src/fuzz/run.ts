// `npm run fuzz -- --seconds N`: fast-check fuzzing of the FastCGI codec, the responder over real sockets, and the CGI response path, for a time budget.
import { intFlag, numberFlag, parseScriptArgs } from '../command.ts';
import v8 from 'node:v8';
import vm from 'node:vm';
import type { PropertyResult } from './check.ts';
import { fuzzCgi } from './cgi-response.ts';
import { fuzzCodec } from './codec.ts';
import { fuzzResponder } from './responder.ts';

export const fuzzTargets = ['codec', 'responder', 'cgi'] as const;
export type FuzzTarget = (typeof fuzzTargets)[number];

// Share of the time each target gets: the socket and process targets run far fewer cases per second.
const shares: Record<FuzzTarget, number> = { codec: 0.2, responder: 0.4, cgi: 0.4 };

export interface FuzzRunOptions {
  seconds: number;
  targets?: readonly FuzzTarget[];
  seed?: number;
  /** Replay: the path a failure printed (with its seed), and a part of the property's name. */
  path?: string;
  only?: string;
  onResult?: (result: PropertyResult) => void;
}

export interface FuzzRunReport {
  results: PropertyResult[];
  /** Problems other than a failed property (memory, a server that stopped answering). */
  problems: string[];
  /** This process's memory before and after each target's run, after a GC: it must stay bounded. */
  memory: Partial<Record<FuzzTarget, MemoryFigures>>;
  canaryRequests: number;
}

export interface MemoryFigures {
  rssBeforeBytes: number;
  rssAfterBytes: number;
  /** Live memory: the V8 heap in use plus memory held by Buffers and other external objects. */
  liveBeforeBytes: number;
  liveAfterBytes: number;
}

/** A gc() that works without --expose-gc, so the memory figures are of live data. */
function gcFunction(): (() => void) | undefined {
  try {
    v8.setFlagsFromString('--expose-gc');
    return vm.runInNewContext('gc') as () => void;
  } catch {
    return undefined;
  }
}

export async function runFuzz(options: FuzzRunOptions): Promise<FuzzRunReport> {
  const targets = options.targets ?? fuzzTargets;
  const total = targets.reduce((sum, t) => sum + shares[t], 0);
  const budget = (t: FuzzTarget) => (options.seconds * 1000 * shares[t]) / total;
  const report: FuzzRunReport = { results: [], problems: [], memory: {}, canaryRequests: 0 };
  const common = { seed: options.seed, path: options.path, only: options.only, onResult: options.onResult };
  const gc = gcFunction();
  // Most growth of live memory (V8 heap plus Buffers, after a GC) over each target's run. RSS is
  // reported but not bounded: the allocator keeps freed pages for a while.
  const limit = 64 * 2 ** 20;
  const measure = () => {
    gc?.();
    const m = process.memoryUsage();
    return { rss: m.rss, live: m.heapUsed + m.external };
  };
  for (const target of targets) {
    const before = measure();
    try {
      if (target === 'codec') report.results.push(...(await fuzzCodec({ ...common, timeMs: budget(target) })));
      else if (target === 'cgi') report.results.push(...(await fuzzCgi({ ...common, timeMs: budget(target) })));
      else {
        const r = await fuzzResponder({ ...common, timeMs: budget(target) });
        report.results.push(...r.results);
        report.canaryRequests = r.canaryRequests;
      }
    } catch (err) {
      report.problems.push(`${target}: ${(err as Error).stack ?? String(err)}`);
    }
    const after = measure();
    report.memory[target] = { rssBeforeBytes: before.rss, rssAfterBytes: after.rss, liveBeforeBytes: before.live, liveAfterBytes: after.live };
    if (after.live - before.live > limit) report.problems.push(`live memory grew by ${((after.live - before.live) / 2 ** 20).toFixed(0)} MiB while fuzzing the ${target} target`);
  }
  return report;
}

export function formatResult(r: PropertyResult): string {
  const head = `${r.failed ? 'FAIL' : 'ok  '} ${r.target}: ${r.property} (${r.runs} runs, ${(r.ms / 1000).toFixed(1)} s)`;
  if (!r.failed) return head;
  return [head, `     replay: npm run fuzz -- --target ${r.target} --seed ${r.seed}${r.path ? ` --path ${r.path}` : ''} --property '${r.property.slice(0, 40)}'`, `     counterexample ${r.counterexample}`, `     ${r.error?.split('\n').slice(0, 6).join('\n     ')}`].join('\n');
}

async function main(argv: string[]): Promise<number> {
  const values = parseScriptArgs(
    {
      script: 'fuzz',
      summary: 'Fuzzes the targets below, for about --seconds in all.',
      details: [
        'targets:',
        '  codec      the FastCGI record decoder and name-value pairs: arbitrary bytes, valid streams split anywhere, one byte changed',
        '  responder  the responder over a unix socket: the same inputs plus arbitrary records and multiplexing past the caps;',
        '             after each case nothing is held and a request on another connection still succeeds',
        '  cgi        the CGI header parser, and `serve` running a script that prints fuzzed output: the answer is the one predicted, or a 502',
        'A failure prints its shrunk counterexample and the command that replays it (--seed, --path, --property).',
      ].join('\n'),
      flags: {
        seconds: { type: 'string', valueName: 'N', default: '60', description: 'time for all targets together' },
        target: { type: 'string', valueName: 'NAME', multiple: true, description: 'codec, responder or cgi (default: all)' },
        seed: { type: 'string', valueName: 'N', description: 'replay: the seed a failure printed' },
        path: { type: 'string', valueName: 'P', description: 'replay: the path a failure printed' },
        property: { type: 'string', valueName: 'TEXT', description: 'replay: part of the property\'s name' },
      },
    },
    argv,
  ) as { seconds: string; target?: string[]; seed?: string; path?: string; property?: string };
  const seconds = numberFlag(values, 'seconds');
  const targets = (values.target ?? [...fuzzTargets]) as FuzzTarget[];
  for (const t of targets) if (!fuzzTargets.includes(t)) throw new TypeError(`unknown target ${t} (codec, responder, cgi)`);
  const write = process.stdout.write.bind(process.stdout);
  const report = await runFuzz({
    seconds,
    targets,
    seed: values.seed === undefined ? undefined : intFlag(values, 'seed', -(2 ** 31)),
    path: values.path,
    only: values.property,
    onResult: (r) => write(formatResult(r) + '\n'),
  });
  const runs = report.results.reduce((n, r) => n + r.runs, 0);
  for (const [target, m] of Object.entries(report.memory)) {
    write(`memory over ${target}: live (heap and Buffers) ${(m.liveBeforeBytes / 2 ** 20).toFixed(1)} -> ${(m.liveAfterBytes / 2 ** 20).toFixed(1)} MiB, RSS ${(m.rssBeforeBytes / 2 ** 20).toFixed(0)} -> ${(m.rssAfterBytes / 2 ** 20).toFixed(0)} MiB\n`);
  }
  if (report.canaryRequests) write(`${report.canaryRequests} requests on the responder's canary connection\n`);
  for (const p of report.problems) write(`problem: ${p}\n`);
  const failed = report.results.filter((r) => r.failed).length;
  write(`${runs} cases, ${failed} failed properties, ${report.problems.length} other problems\n`);
  return failed || report.problems.length ? 1 : 0;
}

if (import.meta.url === `file://${process.argv[1]}`) {
  main(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (err: Error) => {
      process.stderr.write(`fuzz: ${err.message}\n`);
      process.exit(2);
    },
  );
}
