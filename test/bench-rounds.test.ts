// The benchmark's schedule as it runs: targets alternate within each round (A B A B), each step is
// reported with its target, connections, round, elapsed time against the total and its rate, and
// every target gets one combined result per connection count.
import assert from 'node:assert/strict';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { Writable } from 'node:stream';
import { after, before, test } from 'node:test';
import { formatProgress, Progress } from '../src/bench/progress.ts';
import { runRounds } from '../src/bench/rounds.ts';
import type { RunningTarget } from '../src/bench/stack.ts';
import { HELLO_BODY } from '../src/bench/targets.ts';

const servers: http.Server[] = [];
const targets: RunningTarget[] = [];

before(async () => {
  for (const name of ['first', 'second']) {
    const server = http.createServer((_req, res) => res.end(HELLO_BODY));
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    servers.push(server);
    const { port } = server.address() as AddressInfo;
    targets.push({ name, mode: 'http', description: name, url: `http://127.0.0.1:${port}/`, roots: [process.pid], cpus: '' });
  }
});
after(() => Promise.all(servers.map((s) => new Promise((resolve) => s.close(resolve)))));

test('the progress line names the target, connections, round, step and total time, and the rate', () => {
  const line = formatProgress({ target: 'fcgi-serve', connections: 8, round: 2, rounds: 3, phase: 'measure', stepSeconds: 1.25, stepTotalSeconds: 4, elapsedSeconds: 75, totalSeconds: 150, rate: 1234.4, errors: 0 });
  assert.equal(line, 'fcgi-serve c=8 round 2/3 measure 1.3/4.0s  total 1m15s/2m30s  1234 req/s');
  assert.match(formatProgress({ target: 'cgi-ts', connections: 1, round: 1, rounds: 1, phase: 'warm-up', stepSeconds: 0, stepTotalSeconds: 1, elapsedSeconds: 0, totalSeconds: 9, rate: 2.54, errors: 3 }), / 2\.5 req\/s {2}3 errors$/);
});

test('targets run in alternation, round after round, and each gets one result per connection count', async () => {
  const lines: string[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _encoding, callback) {
      lines.push(...chunk.toString().split('\n').filter(Boolean));
      callback();
    },
  }) as unknown as NodeJS.WriteStream;
  const outcome = await runRounds({
    targets,
    connections: [1, 2],
    schedule: { rounds: 2, roundSeconds: 0.3, warmupSeconds: 0.1 },
    signal: new AbortController().signal,
    progress: new Progress(sink),
    seen: new Map(),
  });
  assert.equal(outcome.aborted, false);
  // One line per finished step, in the order they ran.
  const order = lines.map((l) => /^(\S+) c=(\d+) round (\d)\/2 /.exec(l)?.slice(1).join(' '));
  assert.deepEqual(order, [
    'first 1 1', 'second 1 1', 'first 2 1', 'second 2 1',
    'first 1 2', 'second 1 2', 'first 2 2', 'second 2 2',
  ]);
  for (const line of lines) assert.match(line, / total \d+s\/\d+s {2}\d+(\.\d)? req\/s$/);
  assert.deepEqual(outcome.results.map((r) => `${r.target} c=${r.connections}`), ['first c=1', 'second c=1', 'first c=2', 'second c=2']);
  for (const r of outcome.results) {
    assert.ok(r.requests > 0 && r.errors === 0 && r.rps > 0, JSON.stringify(r));
    assert.ok(r.latencyMs.p50 > 0 && r.latencyMs.p50 <= r.latencyMs.max);
  }
});
