// Latency histograms at nanosecond resolution on perf_hooks.createHistogram, their percentiles, and the median of several rounds.
import { createHistogram, type RecordableHistogram } from 'node:perf_hooks';

/** The percentiles every report shows, in milliseconds. */
export interface LatencySummary {
  p50: number;
  p90: number;
  p99: number;
  p999: number;
  max: number;
}

// Two minutes in nanoseconds: anything slower is a timeout, and a bounded range keeps the histogram small.
const HIGHEST_NS = 120e9;

/**
 * An HDR histogram of latencies recorded in nanoseconds with 3 significant figures, so a
 * 60 µs answer and a 60 ms answer are both kept to within 0.1 % (autocannon rounds to whole ms).
 */
export class LatencyHistogram {
  readonly raw: RecordableHistogram;

  constructor() {
    this.raw = createHistogram({ lowest: 1, highest: HIGHEST_NS, figures: 3 });
  }

  /** Records one latency in nanoseconds; values outside [1 ns, 120 s] are clamped rather than dropped. */
  recordNs(ns: number): void {
    this.raw.record(Math.min(HIGHEST_NS, Math.max(1, Math.round(ns))));
  }

  /** Records one latency given in milliseconds (performance.now() differences). */
  recordMs(ms: number): void {
    this.recordNs(ms * 1e6);
  }

  get count(): number {
    return this.raw.count;
  }

  /** The latency in ms below which p percent of the recorded values fall; 0 when empty. */
  percentileMs(p: number): number {
    return this.raw.count === 0 ? 0 : this.raw.percentile(p) / 1e6;
  }

  maxMs(): number {
    return this.raw.count === 0 ? 0 : this.raw.max / 1e6;
  }

  meanMs(): number {
    return this.raw.count === 0 ? 0 : this.raw.mean / 1e6;
  }

  /** Adds every value of another histogram into this one (merging rounds or connections). */
  add(other: LatencyHistogram): this {
    this.raw.add(other.raw);
    return this;
  }

  summary(): LatencySummary {
    return {
      p50: this.percentileMs(50),
      p90: this.percentileMs(90),
      p99: this.percentileMs(99),
      p999: this.percentileMs(99.9),
      max: this.maxMs(),
    };
  }
}

/** The median of a list of numbers (the mean of the middle two for an even count); NaN when empty. */
export function median(values: readonly number[]): number {
  if (values.length === 0) return NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

/** How one target compared with another over rounds run side by side: the median of their per-round ratios, and the rounds the first was ahead in. */
export interface PairedComparison {
  medianRatio: number;
  ahead: number;
  rounds: number;
}

/**
 * Compares `a` with `b` round by round (a[i] with b[i], measured in the same round). On a machine
 * whose speed drifts between rounds, the ratio within a round moves less than either figure, so
 * this says more than a ratio of medians. Rounds missing on either side are left out.
 */
export function pairedComparison(a: readonly number[], b: readonly number[]): PairedComparison {
  const ratios: number[] = [];
  for (let i = 0; i < Math.min(a.length, b.length); i++) if (b[i]! > 0) ratios.push(a[i]! / b[i]!);
  return { medianRatio: median(ratios), ahead: ratios.filter((r) => r > 1).length, rounds: ratios.length };
}

/**
 * Combines the summaries of several rounds of the same measurement: each percentile is the median
 * of that percentile over the rounds, so one round disturbed by something else on the machine does
 * not move the result. The max stays the max of all rounds, because it is the worst case seen.
 */
export function medianOfRounds(rounds: readonly LatencySummary[]): LatencySummary {
  if (rounds.length === 0) throw new RangeError('bench: no rounds to combine');
  return {
    p50: median(rounds.map((r) => r.p50)),
    p90: median(rounds.map((r) => r.p90)),
    p99: median(rounds.map((r) => r.p99)),
    p999: median(rounds.map((r) => r.p999)),
    max: Math.max(...rounds.map((r) => r.max)),
  };
}
