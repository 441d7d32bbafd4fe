// The report's arithmetic and wording on known inputs: formatting, ratios against the baseline, and the plain-words headline.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { formatMs, headline, markdownTable, terminalTable, type BenchResult, type Mode } from '../src/bench/report.ts';
import { planSchedule } from '../src/bench/rounds.ts';

function result(target: string, mode: Mode, connections: number, p50: number, rps: number): BenchResult {
  return { target, mode, connections, requests: 100, errors: 0, rps, latencyMs: { p50, p90: p50 * 2, p99: p50 * 3, p999: p50 * 4, max: p50 * 5 }, cpuMsPerRequest: p50 / 2, peakRssMb: 50 };
}

const results = [
  result('node-http', 'http', 1, 0.1, 8000),
  result('fcgi-serve', 'fastcgi', 1, 0.25, 3000),
  result('fcgi-nginx-unix', 'fastcgi', 1, 0.3, 2800),
  result('cgi-sh', 'cgi', 1, 2, 450),
  result('cgi-mjs', 'cgi', 1, 40, 25),
  result('cgi-ts', 'cgi', 1, 400, 2.5),
  result('node-http', 'http', 8, 0.5, 16000),
  result('fcgi-serve', 'fastcgi', 8, 1, 8000),
  result('cgi-ts', 'cgi', 8, 4000, 2),
];

test('durations keep their precision: µs below a millisecond, ms, then seconds', () => {
  assert.equal(formatMs(0.0456), '46 µs');
  assert.equal(formatMs(0.999), '999 µs');
  assert.equal(formatMs(1.234), '1.23 ms');
  assert.equal(formatMs(12.34), '12.3 ms');
  assert.equal(formatMs(123.4), '123 ms');
  assert.equal(formatMs(1234), '1.23 s');
});

test('the table shows ratios against the baseline at the same connection count', () => {
  const table = terminalTable(results, 'node-http');
  const row = (target: string, c: number) => table.split('\n').find((l) => l.startsWith(target + ' ') && l.split(/\s+/)[2] === String(c))!;
  // cgi-sh at 1: 450 / 8000 req/s = 0.06×, p50 2 / 0.1 ms = 20×.
  assert.match(row('cgi-sh', 1), /0\.06×.*20\.0×/);
  // fcgi-serve at 8: 8000 / 16000 = 0.50×, p50 1 / 0.5 = 2.00×.
  assert.match(row('fcgi-serve', 8), /0\.50×.*2\.00×/);
  assert.match(row('node-http', 8), /1\.00×.*1\.00×/);
  assert.equal(markdownTable(results, 'node-http').trim().split('\n').length, results.length + 2);
});

test('the headline says what a process start costs, in this run’s numbers', () => {
  const lines = headline(results);
  assert.equal(
    lines[0],
    'At 1 connection, a process per request costs 2.00 ms for sh, 40.0 ms for Node (.mjs) and 400 ms for Node with the TypeScript loader (.ts) at the median; ' +
      'the persistent responder running the same fcgi/hello.ts answers in 250 µs through serve and 300 µs behind nginx.',
  );
  assert.match(lines[1]!, /at 8 connections: as FastCGI it serves 4000× the requests\/s of CGI \(8,000 against 2\.00\) with a median latency 4000× lower/);
  assert.match(lines[2]!, /add 200 µs at the median over a plain node:http server \(100 µs\)/);
});

test('in open loop the headline says who kept up with the offered rate', () => {
  const lines = headline(results.filter((r) => r.connections === 8), 5000);
  assert.equal(lines.length, 1);
  assert.match(lines[0]!, /^Offered 5,000 requests\/s on 8 connections: node-http \(p99 1\.50 ms\) and fcgi-serve \(p99 3\.00 ms\) kept up; cgi-ts \(2\.00\/s, p50 4\.00 s\) fell behind/);
});

test('the schedule splits --duration into up to three rounds of at least a second', () => {
  assert.deepEqual(planSchedule(1), { rounds: 1, roundSeconds: 1, warmupSeconds: 0.25 });
  assert.deepEqual(planSchedule(2), { rounds: 2, roundSeconds: 1, warmupSeconds: 0.25 });
  assert.deepEqual(planSchedule(3), { rounds: 3, roundSeconds: 1, warmupSeconds: 0.25 });
  assert.deepEqual(planSchedule(12), { rounds: 3, roundSeconds: 4, warmupSeconds: 1 });
  assert.equal(planSchedule(0.5).rounds, 1);
});
