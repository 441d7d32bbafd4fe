// The soak of `npm run soak`, in a short form: mixed load (GET, 1 MiB POST, streamed answers) through nginx to the responder, and against `serve`; zero errors, nothing left behind.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { requirePeer } from '../src/peers/index.ts';
import { formatReport, runSoak, type SoakReport } from '../src/soak/soak.ts';
import { summarise } from '../src/soak/stats.ts';

const seconds = Number(process.env.SOAK_SECONDS ?? 8);

test('the RSS rule: a steady leak shows as growth, a flat series with spikes does not', () => {
  const MiB = 2 ** 20;
  // 100 samples climbing from 100 to 120 MiB: the start and end tenths are 20% apart.
  const leaking = summarise(Array.from({ length: 100 }, (_, i) => (100 + (20 * i) / 99) * MiB));
  assert.ok(leaking.growth > 0.18 && leaking.growth < 0.22, String(leaking.growth));
  assert.ok(leaking.growth > 0.1, 'beyond the soak\'s 10% limit');
  // Flat at 100 MiB but for a spike to 300 MiB in the last tenth and one in the first: no growth.
  const flat = Array.from({ length: 100 }, () => 100 * MiB);
  flat[3] = 300 * MiB;
  flat[97] = 300 * MiB;
  const spiky = summarise(flat);
  assert.equal(spiky.growth, 0);
  assert.equal(spiky.max, 300 * MiB);
});

function assertClean(report: SoakReport): void {
  const text = formatReport(report);
  assert.equal(report.runnerDied, undefined, text);
  assert.equal(report.load.errors, 0, text);
  assert.ok(report.load.requests > 50, text);
  for (const kind of ['get', 'post', 'stream'] as const) assert.ok(report.load.byKind[kind].requests > 0, `no ${kind} request ran\n${text}`);
  assert.equal(report.watch.lingeringZombies, 0, text);
  assert.equal(report.settled.zombies, 0, text);
  assert.equal(report.settled.children, 0, text);
  assert.equal(report.leftovers, 0, text);
  // Idle again, the runner holds no more descriptors than before the load (a few for lazily opened files).
  assert.ok(report.settled.fds <= Math.max(report.fdsBefore, report.watch.fds.min) + 8, text);
  assert.deepEqual(report.failures, [], text);
}

test(`soak, FastCGI behind nginx: ${seconds} s at 16 connections, no error, nothing left behind`, { timeout: (seconds + 60) * 1000 }, async (t) => {
  if (!requirePeer(t, 'nginx')) return;
  const report = await runSoak({ mode: 'fcgi', durationMs: seconds * 1000, connections: 16, maxRssGrowth: Infinity });
  t.diagnostic(formatReport(report));
  assertClean(report);
});

test(`soak, CGI: ${seconds} s at 8 connections, no error, every script reaped`, { timeout: (seconds + 60) * 1000 }, async (t) => {
  const report = await runSoak({ mode: 'cgi', durationMs: seconds * 1000, connections: 8, maxRssGrowth: Infinity });
  t.diagnostic(formatReport(report));
  assertClean(report);
});
