// Many instances and live operations under load, through nginx with the deploy/ files:
// two responders behind one upstream (deploy/nginx/scale-out.conf.template), one killed mid-load;
// and a SIGHUP rolling reload of --workers 2 with no failed request.
import assert from 'node:assert/strict';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { startDeployNginx, startFcgi, type DeployNginx, type Fcgi } from '../src/deploy/stack.ts';
import { deployDir, repoRoot } from '../src/deploy/template.ts';
import { freePort, requirePeer } from '../src/peers/index.ts';
import { waitFor } from './cgi-fixture.ts';
import { eventually } from './fixtures/eventually.ts';

const site = path.join(deployDir, 'site.ts');
const env = { ...process.env, SITE_APP_DIR: path.join(repoRoot, 'test/fixtures/apps') };

const cleanups: Array<() => Promise<unknown>> = [];
after(async () => {
  for (const c of cleanups.reverse()) await c().catch(() => {});
});

interface Outcome {
  method: string;
  start: number;
  end: number;
  ok: boolean;
  detail: string;
}

/**
 * Closed-loop load: `concurrency` clients, each sending the next request when the last one ends,
 * until `until` resolves. With `posts`, every other client sends POSTs (which nginx does not retry).
 */
async function load(url: string, concurrency: number, until: Promise<unknown>, posts = false): Promise<Outcome[]> {
  const outcomes: Outcome[] = [];
  let done = false;
  void until.then(() => (done = true));
  await Promise.all(
    Array.from({ length: concurrency }, async (_, client) => {
      const method = posts && client % 2 === 1 ? 'POST' : 'GET';
      while (!done) {
        const start = performance.now();
        try {
          const res = await fetch(url, method === 'POST' ? { method, body: 'form=data' } : {});
          const body = await res.text();
          outcomes.push({ method, start, end: performance.now(), ok: res.status === 200, detail: `${method} ${res.status} ${body.slice(0, 60).trim()}` });
        } catch (err) {
          outcomes.push({ method, start, end: performance.now(), ok: false, detail: `${method} ${String((err as Error).cause ?? err)}` });
        }
      }
    }),
  );
  return outcomes;
}

function accessLines(app: Fcgi, uri: string): number {
  return app.output().split('\n').filter((l) => l.includes(`"GET ${uri} HTTP/1.1" 200`) || l.includes(`"POST ${uri} HTTP/1.1" 200`)).length;
}

describe('several responders behind one nginx upstream', () => {
  test('nginx routes around an instance killed during load', async (t) => {
    if (!requirePeer(t, 'nginx')) return;
    const [a, b] = await Promise.all([startFcgi({ app: site, listen: 'tcp', env, name: 'instance a' }), startFcgi({ app: site, listen: 'tcp', env, name: 'instance b' })]);
    cleanups.push(() => a.stop(), () => b.stop());
    const port = await freePort();
    const nginx: DeployNginx = await startDeployNginx({
      templates: [path.join(deployDir, 'nginx/scale-out.conf.template')],
      vars: { NGINX_PORT: `127.0.0.1:${port}`, APP1: a.address, APP2: b.address },
    });
    cleanups.push(() => nginx.stop());
    const uri = '/kitchen/slow?ms=20';
    const url = `http://127.0.0.1:${port}${uri}`;
    // Both instances take traffic first.
    for (let i = 0; i < 8; i++) assert.equal((await fetch(url)).status, 200);

    let killedAt = 0;
    const killer = (async () => {
      await sleep(1000);
      killedAt = performance.now();
      process.kill(a.pid, 'SIGKILL');
      await sleep(2000);
    })();
    const servedByBBefore = accessLines(b, uri);
    const outcomes = await load(url, 16, killer, true);

    const failed = outcomes.filter((o) => !o.ok);
    // A process takes a moment to die: a request sent just after kill() may still reach it.
    const settled = killedAt + 50;
    const inFlight = outcomes.filter((o) => o.start < settled && o.end >= killedAt);
    const afterKill = outcomes.filter((o) => o.start >= settled);
    const count = (list: Outcome[], method: string) => list.filter((o) => o.method === method).length;
    t.diagnostic(
      `${outcomes.length} requests from 16 clients (8 GET, 8 POST); in flight when instance a was killed: ` +
        `${count(inFlight, 'GET')} GET and ${count(inFlight, 'POST')} POST (on either instance, or sent in the 50 ms it took to die); ` +
        `failed: ${count(failed, 'GET')} GET, ${count(failed, 'POST')} POST` +
        `${failed.length ? ` (${[...new Set(failed.map((f) => f.detail))].join('; ')})` : ''}; ` +
        `${afterKill.length} started after the kill, ${afterKill.filter((o) => !o.ok).length} failed`,
    );
    assert.ok(afterKill.length > 50, 'load went on after the kill');
    assert.deepEqual(afterKill.filter((o) => !o.ok), [], 'every request after the kill succeeds on instance b');
    // Only requests in flight on the dead instance may fail, and only POSTs: nginx retries a GET on
    // the next server (fastcgi_next_upstream), but not a request that is not idempotent.
    assert.ok(failed.every((f) => f.start < settled && f.end >= killedAt), 'failures are limited to requests in flight at the kill');
    assert.equal(count(failed, 'GET'), 0, 'in-flight GETs were retried on instance b');
    assert.ok(count(failed, 'POST') <= count(inFlight, 'POST'));
    // Access lines are written a moment after their answers.
    await waitFor('access lines showing that instance b served the rest', () => accessLines(b, uri) - servedByBBefore >= afterKill.length || undefined);
    // nginx logged the dead instance and nothing about the live one.
    const errors = nginx.nginx.errors();
    assert.ok(errors.some((l) => l.includes(a.address)), 'the failure of instance a is in the error log');
    assert.ok(errors.every((l) => !l.includes(`upstream: "fastcgi://${b.address}"`)), errors.join('\n'));
  });
});

describe('graceful reload', () => {
  test('SIGHUP replaces the workers one at a time with no failed request under load', async (t) => {
    if (!requirePeer(t, 'nginx')) return;
    const app = await startFcgi({ app: site, listen: 'tcp', env, args: ['--workers', '2'] });
    cleanups.push(() => app.stop());
    const port = await freePort();
    const nginx = await startDeployNginx({
      templates: [path.join(deployDir, 'nginx/templates/default.conf.template')],
      vars: { NGINX_PORT: `127.0.0.1:${port}`, APP_TCP: app.address, APP_SOCKET: '/nonexistent/app.sock' },
    });
    cleanups.push(() => nginx.stop());
    const base = `http://127.0.0.1:${port}/tcp/kitchen`;
    const pids = async () => {
      const seen = new Set<string>();
      // New connections from nginx go to the workers in turn; 20 requests see both.
      for (let i = 0; i < 20; i++) seen.add((await (await fetch(`${base}/pid`)).text()).trim());
      return seen;
    };
    await eventually(() => app.output(), /2 workers serving/, 20_000);
    const before = await pids();

    const reloaded = (async () => {
      await sleep(300);
      process.kill(app.pid, 'SIGHUP');
      await eventually(() => app.output(), /reload done/, 30_000);
      await sleep(300);
    })();
    const outcomes = await load(`${base}/slow?ms=10`, 16, reloaded);
    const failed = outcomes.filter((o) => !o.ok);
    t.diagnostic(`${outcomes.length} requests during the reload, ${failed.length} failed`);
    assert.ok(outcomes.length > 100);
    assert.deepEqual(failed, []);
    const after = await pids();
    for (const pid of after) assert.ok(!before.has(pid), `worker ${pid} was started by the reload (before: ${[...before]})`);
  });
});

