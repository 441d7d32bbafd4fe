// The measurement schedule: rounds in alternation (A B A B) over targets and connection counts, each step a warm-up then a measured load, combined as the median of rounds.
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { median, medianOfRounds, type LatencySummary } from './histogram.ts';
import { startLoad, type LoadResult } from './loadgen.ts';
import { TreeSampler, type TreeUsage } from './proc-stats.ts';
import type { Progress, ProgressState } from './progress.ts';
import { formatProgress } from './progress.ts';
import type { BenchResult } from './report.ts';
import type { RunningTarget } from './stack.ts';
import { HELLO_BODY } from './targets.ts';

const WARMUP_DRAIN_MS = 250;
const SETTLE_MS = 100;

export interface Schedule {
  rounds: number;
  roundSeconds: number;
  warmupSeconds: number;
}

/**
 * Splits --duration (measured seconds per target and connection count) into rounds: up to three,
 * each at least a second, so the median has something to choose from and a short run stays short.
 */
export function planSchedule(durationSeconds: number): Schedule {
  const rounds = Math.min(3, Math.max(1, Math.floor(durationSeconds)));
  const roundSeconds = durationSeconds / rounds;
  // Long enough to reach a steady state (JIT, php opcache, nginx upstream connections), short enough not to dominate.
  const warmupSeconds = Math.round(Math.min(1, Math.max(0.25, roundSeconds / 4)) * 100) / 100;
  return { rounds, roundSeconds, warmupSeconds };
}

export interface RoundsOptions {
  targets: readonly RunningTarget[];
  connections: readonly number[];
  schedule: Schedule;
  rate?: number;
  signal: AbortSignal;
  progress: Progress;
  /** Collects every process seen in the serving trees (for the clean-up check). */
  seen: Map<number, number>;
  /** Per-request timeout and end-of-step drain, ms. */
  timeoutMs?: number;
}

export interface RoundsOutcome {
  results: BenchResult[];
  unsent: Record<string, number>;
  errorKinds: Record<string, Record<string, number>>;
  aborted: boolean;
}

interface Step {
  load: LoadResult;
  usage: TreeUsage;
}

export async function runRounds(options: RoundsOptions): Promise<RoundsOutcome> {
  const { targets, connections, schedule, progress, signal } = options;
  const steps = new Map<string, Step[]>();
  const key = (t: string, c: number) => `${t} c=${c}`;
  const totalSteps = schedule.rounds * connections.length * targets.length;
  const stepSeconds = schedule.warmupSeconds + schedule.roundSeconds;
  const began = performance.now();
  let done = 0;
  let aborted = false;

  outer: for (let round = 1; round <= schedule.rounds; round++) {
    for (const c of connections) {
      for (const target of targets) {
        if (signal.aborted) {
          aborted = true;
          break outer;
        }
        const state: ProgressState = {
          target: target.name,
          connections: c,
          round,
          rounds: schedule.rounds,
          phase: 'warm-up',
          stepSeconds: 0,
          stepTotalSeconds: schedule.roundSeconds,
          elapsedSeconds: 0,
          totalSeconds: 0,
          rate: 0,
          errors: 0,
        };
        const load = (durationMs: number, drainMs?: number) =>
          startLoad({ url: target.url, connections: c, durationMs, rate: options.rate, expectBody: HELLO_BODY, signal, timeoutMs: options.timeoutMs, drainMs });
        const watch = (run: ReturnType<typeof startLoad>, phase: ProgressState['phase'], stepTotal: number) => {
          const tick = () => {
            const elapsed = (performance.now() - began) / 1000;
            const inStep = run.elapsedMs() / 1000;
            state.phase = inStep > stepTotal ? 'drain' : phase;
            state.stepSeconds = inStep;
            state.stepTotalSeconds = stepTotal;
            state.elapsedSeconds = elapsed;
            // What is left: the rest of this step and every step after it, at the planned length.
            state.totalSeconds = elapsed + Math.max(0, stepTotal - inStep) + (phase === 'warm-up' ? schedule.roundSeconds : 0) + (totalSteps - done - 1) * stepSeconds;
            state.rate = inStep > 0 ? run.completed() / inStep : 0;
            state.errors = run.errors();
            progress.update(state);
          };
          const timer = setInterval(tick, 200);
          tick();
          return () => clearInterval(timer);
        };

        // Warm-up: same connections and rate, results discarded. Requests still in flight at its end are
        // cut off rather than waited for (a CGI request under load can take seconds); the server kills
        // their scripts, and a short pause lets it settle before the measured window opens.
        const warm = load(schedule.warmupSeconds * 1000, WARMUP_DRAIN_MS);
        let unwatch = watch(warm, 'warm-up', schedule.warmupSeconds);
        await warm.done.catch(() => undefined).finally(unwatch);
        await sleep(SETTLE_MS);
        if (signal.aborted) {
          aborted = true;
          break outer;
        }

        const sampler = new TreeSampler(target.roots, 100, options.seen);
        sampler.start();
        const run = load(schedule.roundSeconds * 1000);
        unwatch = watch(run, 'measure', schedule.roundSeconds);
        let result: LoadResult;
        try {
          result = await run.done;
        } finally {
          unwatch();
        }
        const usage = sampler.stop();
        if (result.aborted) {
          aborted = true;
          break outer;
        }
        const k = key(target.name, c);
        steps.set(k, [...(steps.get(k) ?? []), { load: result, usage }]);
        done++;
        state.phase = 'measure';
        state.stepSeconds = result.elapsedMs / 1000;
        state.rate = result.rps;
        state.errors = result.errors;
        state.elapsedSeconds = (performance.now() - began) / 1000;
        state.totalSeconds = state.elapsedSeconds + (totalSteps - done) * stepSeconds;
        progress.log(formatProgress(state));
      }
    }
  }
  progress.clear();

  const results: BenchResult[] = [];
  const unsent: Record<string, number> = {};
  const errorKinds: Record<string, Record<string, number>> = {};
  for (const c of connections) {
    for (const target of targets) {
      const k = key(target.name, c);
      const s = steps.get(k);
      if (!s?.length) continue;
      results.push(combine(target, c, s));
      const u = s.reduce((n, x) => n + x.load.unsent, 0);
      if (u) unsent[k] = u;
      const kinds: Record<string, number> = {};
      for (const x of s) for (const [kind, n] of Object.entries(x.load.errorKinds)) kinds[kind] = (kinds[kind] ?? 0) + n;
      if (Object.keys(kinds).length) errorKinds[k] = kinds;
    }
  }
  return { results, unsent, errorKinds, aborted };
}

/** One result from the rounds of a step: medians, except counts (summed) and max (the worst). */
export function combine(target: { name: string; mode: BenchResult['mode'] }, connections: number, steps: readonly Step[]): BenchResult {
  const latency: LatencySummary = medianOfRounds(steps.map((s) => s.load.latency.summary()));
  const round3 = (n: number) => Math.round(n * 1000) / 1000;
  return {
    target: target.name,
    mode: target.mode,
    connections,
    requests: steps.reduce((n, s) => n + s.load.requests, 0),
    errors: steps.reduce((n, s) => n + s.load.errors, 0),
    rps: Math.round(median(steps.map((s) => s.load.rps)) * 10) / 10,
    latencyMs: {
      p50: round3(latency.p50),
      p90: round3(latency.p90),
      p99: round3(latency.p99),
      p999: round3(latency.p999),
      max: round3(latency.max),
    },
    cpuMsPerRequest: round3(median(steps.map((s) => (s.load.requests ? s.usage.cpuMs / s.load.requests : 0)))),
    peakRssMb: Math.round((Math.max(...steps.map((s) => s.usage.peakRssBytes)) / (1024 * 1024)) * 10) / 10,
  };
}
