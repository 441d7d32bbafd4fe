// The percentile arithmetic of the benchmark on known inputs: histogram percentiles, merging, the median of rounds and the round-by-round comparison of two targets.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { LatencyHistogram, median, medianOfRounds, pairedComparison } from '../src/bench/histogram.ts';
import { combine } from '../src/bench/rounds.ts';
import type { LoadResult } from '../src/bench/loadgen.ts';

/** HDR histograms with 3 significant figures are exact to within 0.1 %. */
function near(actual: number, expected: number, what: string): void {
  assert.ok(Math.abs(actual - expected) <= expected * 0.001 + 1e-9, `${what}: ${actual} is not within 0.1 % of ${expected}`);
}

test('percentiles of 1..10000 µs are the matching ranks', () => {
  const h = new LatencyHistogram();
  for (let us = 1; us <= 10_000; us++) h.recordMs(us / 1000);
  assert.equal(h.count, 10_000);
  const s = h.summary();
  near(s.p50, 5, 'p50');
  near(s.p90, 9, 'p90');
  near(s.p99, 9.9, 'p99');
  near(s.p999, 9.99, 'p99.9');
  near(s.max, 10, 'max');
  near(h.meanMs(), 5.0005, 'mean');
});

test('sub-millisecond latencies keep microsecond precision (not whole milliseconds)', () => {
  const h = new LatencyHistogram();
  for (let i = 0; i < 99; i++) h.recordMs(0.123);
  h.recordMs(0.987);
  near(h.percentileMs(50), 0.123, 'p50');
  near(h.percentileMs(99), 0.123, 'p99 (99 of 100 values are 123 µs)');
  near(h.percentileMs(99.9), 0.987, 'p99.9');
  near(h.maxMs(), 0.987, 'max');
});

test('a skewed distribution: p50 stays low while the tail shows', () => {
  const h = new LatencyHistogram();
  for (let i = 0; i < 900; i++) h.recordMs(1);
  for (let i = 0; i < 90; i++) h.recordMs(10);
  for (let i = 0; i < 9; i++) h.recordMs(100);
  h.recordMs(1000);
  const s = h.summary();
  near(s.p50, 1, 'p50');
  near(s.p90, 1, 'p90 (rank 900 is the last 1 ms value)');
  near(s.p99, 10, 'p99');
  near(s.p999, 100, 'p99.9');
  near(s.max, 1000, 'max');
});

test('an empty histogram reports zeros, and values out of range are clamped, not lost', () => {
  const h = new LatencyHistogram();
  assert.deepEqual(h.summary(), { p50: 0, p90: 0, p99: 0, p999: 0, max: 0 });
  h.recordNs(0);
  h.recordMs(10 * 60 * 1000);
  assert.equal(h.count, 2);
  near(h.maxMs(), 120_000, 'max clamped to 120 s');
});

test('merging two rounds equals recording everything in one', () => {
  const a = new LatencyHistogram();
  const b = new LatencyHistogram();
  const all = new LatencyHistogram();
  for (let i = 1; i <= 500; i++) {
    a.recordMs(i / 100);
    all.recordMs(i / 100);
  }
  for (let i = 501; i <= 1000; i++) {
    b.recordMs(i / 100);
    all.recordMs(i / 100);
  }
  const merged = new LatencyHistogram().add(a).add(b);
  assert.equal(merged.count, 1000);
  assert.deepEqual(merged.summary(), all.summary());
});

test('median of odd and even counts', () => {
  assert.equal(median([3, 1, 2]), 2);
  assert.equal(median([4, 1, 3, 2]), 2.5);
  assert.equal(median([7]), 7);
  assert.ok(Number.isNaN(median([])));
});

test('median of rounds: each percentile is the median over rounds, max the worst round', () => {
  const rounds = [
    { p50: 1, p90: 2, p99: 3, p999: 4, max: 5 },
    { p50: 10, p90: 20, p99: 30, p999: 40, max: 500 }, // a disturbed round
    { p50: 2, p90: 3, p99: 4, p999: 5, max: 6 },
  ];
  assert.deepEqual(medianOfRounds(rounds), { p50: 2, p90: 3, p99: 4, p999: 5, max: 500 });
  assert.throws(() => medianOfRounds([]), /bench: no rounds/);
});

test('combining rounds into a result: summed counts, median rate and CPU, peak RSS over rounds', () => {
  const round = (ms: number, rps: number, requests: number, cpuMs: number, rssMb: number) => {
    const latency = new LatencyHistogram();
    for (let i = 0; i < requests; i++) latency.recordMs(ms);
    const load: LoadResult = { requests, errors: 0, errorKinds: {}, rps, elapsedMs: 1000, latency, unsent: 0, aborted: false };
    return { load, usage: { cpuMs, peakRssBytes: rssMb * 1024 * 1024, samples: 10 } };
  };
  const r = combine({ name: 't', mode: 'fastcgi' }, 8, [round(1, 1000, 1000, 500, 50), round(3, 900, 900, 900, 60), round(2, 1100, 1100, 550, 55)]);
  assert.equal(r.requests, 3000);
  assert.equal(r.errors, 0);
  assert.equal(r.rps, 1000);
  near(r.latencyMs.p50, 2, 'p50');
  near(r.latencyMs.max, 3, 'max');
  assert.equal(r.cpuMsPerRequest, 0.5);
  assert.equal(r.peakRssMb, 60);
});

test('paired comparison: the median of per-round ratios and the rounds ahead', () => {
  const cases: { a: number[]; b: number[]; want: { medianRatio: number; ahead: number; rounds: number } }[] = [
    // Ahead in two rounds of three; the middle ratio is 1.1.
    { a: [110, 90, 220], b: [100, 100, 200], want: { medianRatio: 1.1, ahead: 2, rounds: 3 } },
    // A slow round for both moves neither the ratio nor the count.
    { a: [100, 50, 100], b: [100, 50, 100], want: { medianRatio: 1, ahead: 0, rounds: 3 } },
    // Paired by round, not by rank: a's best round was b's better one too, and a trails in every round.
    { a: [90, 180], b: [100, 200], want: { medianRatio: 0.9, ahead: 0, rounds: 2 } },
    // Unequal lengths: only the rounds both have; a round where b measured nothing is left out.
    { a: [120, 100, 300], b: [100, 0], want: { medianRatio: 1.2, ahead: 1, rounds: 1 } },
  ];
  for (const { a, b, want } of cases) {
    const got = pairedComparison(a, b);
    assert.equal(got.ahead, want.ahead, JSON.stringify({ a, b }));
    assert.equal(got.rounds, want.rounds, JSON.stringify({ a, b }));
    assert.ok(Math.abs(got.medianRatio - want.medianRatio) < 1e-9, `${JSON.stringify({ a, b })}: ${got.medianRatio}`);
  }
  assert.ok(Number.isNaN(pairedComparison([], [1]).medianRatio));
});
