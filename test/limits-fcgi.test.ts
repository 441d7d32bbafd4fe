// Every limit of `cgi-runner fcgi`, set by its flag on a real responder process and reached by a raw record client:
// requests per connection and per process (with GET_VALUES agreeing), connections, PARAMS bytes, STDIN buffered, idle and request timeouts.
import assert from 'node:assert/strict';
import { after, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { decodePairs, encodePairs } from '../src/fastcgi/pairs.ts';
import { FCGI_GET_VALUES, FCGI_GET_VALUES_RESULT, FCGI_KEEP_CONN, FCGI_OVERLOADED, FCGI_REQUEST_COMPLETE, FCGI_STDIN } from '../src/fastcgi/protocol.ts';
import { encodeRecord, encodeStream } from '../src/fastcgi/record.ts';
import { freePort, startProcess, stop as stopProcess, waitForPort, waitUntilReady, type ManagedProcess } from '../src/peers/index.ts';
import { readStat } from '../src/bench/proc-stats.ts';
import { cliArgs, repoRoot, soakAppPath } from '../src/soak/stack.ts';
import { WireClient, parseCgiResponse } from './fastcgi-wire.ts';

const MiB = 1024 * 1024;
const running: ManagedProcess[] = [];

/** `cgi-runner fcgi` for src/soak/app.ts on a free TCP port, with these flags. */
async function responder(flags: string[]): Promise<{ port: number; proc: ManagedProcess }> {
  const port = await freePort();
  const { command, args } = cliArgs('fcgi', ['--listen', `127.0.0.1:${port}`, '--app', soakAppPath, '--no-access-log', ...flags]);
  const proc = await startProcess({ name: 'cgi-runner fcgi', command, args, cwd: repoRoot });
  running.push(proc);
  await waitUntilReady(proc, (signal) => waitForPort(port, '127.0.0.1', 20_000, signal));
  return { port, proc };
}

after(async () => {
  await Promise.all(running.map((p) => stopProcess(p, 'SIGKILL', 2000)));
});

const params = (uri: string, method = 'GET') => ({ REQUEST_METHOD: method, REQUEST_URI: uri, SCRIPT_NAME: uri.split('?')[0]!, QUERY_STRING: uri.split('?')[1] ?? '', HTTP_HOST: 'limits.test', SERVER_PROTOCOL: 'HTTP/1.1' });

async function getValues(client: WireClient): Promise<Record<string, string>> {
  client.write(encodeRecord(FCGI_GET_VALUES, 0, encodePairs({ FCGI_MAX_CONNS: '', FCGI_MAX_REQS: '', FCGI_MPXS_CONNS: '' })));
  const record = await client.waitFor(() => client.records.find((r) => r.type === FCGI_GET_VALUES_RESULT));
  return decodePairs(record.content);
}

describe('requests per connection and per process', () => {
  test('GET_VALUES answers the caps set by --max-conns, --max-reqs and --max-conn-reqs', async () => {
    const { port } = await responder(['--max-conns', '7', '--max-reqs', '3', '--max-conn-reqs', '1']);
    const client = await WireClient.connect(port);
    assert.deepEqual(await getValues(client), { FCGI_MAX_CONNS: '7', FCGI_MAX_REQS: '3', FCGI_MPXS_CONNS: '0' });
    client.close();
    // Without a per-connection cap the responder multiplexes.
    const other = await responder(['--max-reqs', '5']);
    const c2 = await WireClient.connect(other.port);
    assert.deepEqual(await getValues(c2), { FCGI_MAX_CONNS: '1024', FCGI_MAX_REQS: '5', FCGI_MPXS_CONNS: '1' });
    c2.close();
  });

  test('beyond --max-conn-reqs on one connection, FCGI_OVERLOADED; other connections still get their slots', async () => {
    const { port } = await responder(['--max-reqs', '4', '--max-conn-reqs', '2']);
    const a = await WireClient.connect(port);
    for (const id of [1, 2, 3]) a.request(id, params('/app/sleep?ms=600'));
    const third = await a.response(3);
    assert.equal(third.protocolStatus, FCGI_OVERLOADED);
    assert.equal(third.stdout.length, 0);
    // The process cap (4) is not reached: a second connection gets two more.
    const b = await WireClient.connect(port);
    b.request(1, params('/app/sleep?ms=100'));
    b.request(2, params('/app/hello'));
    assert.equal(parseCgiResponse((await b.response(2)).stdout).status, 200);
    for (const id of [1, 2]) {
      const r = await a.response(id);
      assert.equal(r.protocolStatus, FCGI_REQUEST_COMPLETE);
      assert.equal(parseCgiResponse(r.stdout).body.toString(), 'slept\n');
    }
    // Slots free again: the same connection takes a new request.
    a.request(4, params('/app/hello'));
    assert.equal((await a.response(4)).protocolStatus, FCGI_REQUEST_COMPLETE);
    a.close();
    b.close();
  });

  test('beyond --max-reqs across connections, FCGI_OVERLOADED at once rather than a wait', async () => {
    const { port } = await responder(['--max-reqs', '2']);
    const clients = await Promise.all([1, 2, 3].map(() => WireClient.connect(port)));
    clients[0]!.request(1, params('/app/sleep?ms=800'));
    clients[1]!.request(1, params('/app/sleep?ms=800'));
    await sleep(150);
    const started = Date.now();
    clients[2]!.request(1, params('/app/hello'));
    const refused = await clients[2]!.response(1);
    assert.equal(refused.protocolStatus, FCGI_OVERLOADED);
    assert.ok(Date.now() - started < 500, 'refused without waiting for a slot');
    for (const c of clients.slice(0, 2)) assert.equal((await c.response(1)).protocolStatus, FCGI_REQUEST_COMPLETE);
    clients[2]!.request(2, params('/app/hello'));
    assert.equal((await clients[2]!.response(2)).protocolStatus, FCGI_REQUEST_COMPLETE);
    for (const c of clients) c.close();
  });
});

describe('connections and PARAMS', () => {
  test('beyond --max-conns a connection is closed at once; the others are served', async () => {
    const { port } = await responder(['--max-conns', '2']);
    const a = await WireClient.connect(port);
    const b = await WireClient.connect(port);
    await sleep(100);
    const c = await WireClient.connect(port);
    await c.closedPromise;
    a.request(1, params('/app/hello'));
    b.request(1, params('/app/hello'));
    assert.equal((await a.response(1)).protocolStatus, FCGI_REQUEST_COMPLETE);
    assert.equal((await b.response(1)).protocolStatus, FCGI_REQUEST_COMPLETE);
    a.close();
    await a.closedPromise;
    await sleep(100);
    const d = await WireClient.connect(port);
    d.request(1, params('/app/hello'));
    assert.equal((await d.response(1)).protocolStatus, FCGI_REQUEST_COMPLETE);
    b.close();
    d.close();
  });

  test('PARAMS beyond --max-params close that connection; a request at the cap is served', async () => {
    const { port } = await responder(['--max-params', '2048']);
    const big = await WireClient.connect(port);
    big.request(1, { ...params('/app/hello'), HTTP_COOKIE: 'x'.repeat(4000) });
    await big.closedPromise;
    assert.equal(big.records.length, 0);
    const fits = await WireClient.connect(port);
    fits.request(1, { ...params('/app/hello'), HTTP_COOKIE: 'x'.repeat(1500) });
    assert.equal(parseCgiResponse((await fits.response(1)).stdout).status, 200);
    fits.close();
  });
});

describe('STDIN buffered per request', () => {
  test('an app that does not read its body holds back the web server at --stdin-buffer, not the whole upload', async (t) => {
    const { port, proc } = await responder(['--stdin-buffer', String(64 * 1024)]);
    const client = await WireClient.connect(port);
    const rssBefore = readStat(proc.pid)!.rssBytes;
    client.begin(1);
    client.params(1, params('/app/sleep?ms=2500', 'POST'));
    // 64 MiB of STDIN offered as fast as the socket takes it; the app sleeps and never reads it.
    // A write's callback runs once the kernel has its bytes: their sum is what the responder let in.
    const record = encodeStream(FCGI_STDIN, 1, Buffer.alloc(65528, 0x61));
    let accepted = 0;
    let offered = 0;
    const pump = () => {
      while (offered < 64 * MiB && !client.socket.destroyed) {
        offered += record.length;
        if (!client.socket.write(record, () => (accepted += record.length))) return void client.socket.once('drain', pump);
      }
      client.write(encodeRecord(FCGI_STDIN, 1));
    };
    pump();
    await sleep(1500);
    const rssGrowth = readStat(proc.pid)!.rssBytes - rssBefore;
    t.diagnostic(`64 MiB offered: the kernel took ${(accepted / MiB).toFixed(1)} MiB, the responder grew by ${(rssGrowth / MiB).toFixed(1)} MiB`);
    // What left the client sits in kernel buffers (a few MiB on loopback) and 64 KiB in the responder.
    assert.ok(accepted < 24 * MiB, `the kernel took ${(accepted / MiB).toFixed(1)} MiB from the client`);
    assert.ok(rssGrowth < 32 * MiB, `the responder grew by ${(rssGrowth / MiB).toFixed(1)} MiB`);
    const r = await client.response(1, 10_000);
    assert.equal(parseCgiResponse(r.stdout).body.toString(), 'slept\n');
    client.close();
  });

  test('an app that reads its body gets all of it through the same buffer', async () => {
    const { port } = await responder(['--stdin-buffer', String(64 * 1024)]);
    const client = await WireClient.connect(port);
    client.request(1, params('/app/echo', 'POST'), Buffer.alloc(32 * MiB, 0x62));
    const r = await client.response(1, 30_000);
    assert.equal(JSON.parse(parseCgiResponse(r.stdout).body.toString()).size, 32 * MiB);
    client.close();
  });
});

describe('timeouts', () => {
  test('--idle-timeout closes a connection with no request in flight, never one with a request running, and that one once it is idle', async () => {
    const { port } = await responder(['--idle-timeout', '1']);
    const idle = await WireClient.connect(port);
    const busy = await WireClient.connect(port);
    const started = Date.now();
    busy.request(1, params('/app/sleep?ms=2200'));
    await idle.closedPromise;
    const idleFor = Date.now() - started;
    assert.ok(idleFor >= 900 && idleFor < 2500, `idle connection closed after ${idleFor} ms`);
    const r = await busy.response(1, 5000);
    assert.equal(parseCgiResponse(r.stdout).body.toString(), 'slept\n');
    assert.equal(busy.closed, false);
    // Idle from its answer on, it is closed in turn.
    const answeredAt = Date.now();
    await busy.closedPromise;
    const afterAnswer = Date.now() - answeredAt;
    assert.ok(afterAnswer >= 800 && afterAnswer < 2500, `closed ${afterAnswer} ms after its answer`);
  });

  test('--request-timeout ends a request running too long with a 500 and END_REQUEST; the connection goes on', async () => {
    const { port } = await responder(['--request-timeout', '1']);
    const client = await WireClient.connect(port);
    const started = Date.now();
    client.request(1, params('/app/sleep?ms=5000'));
    const r = await client.response(1, 5000);
    const took = Date.now() - started;
    assert.equal(parseCgiResponse(r.stdout).status, 500);
    assert.match(r.stderr, /timed out/);
    assert.ok(took >= 900 && took < 3000, `ended after ${took} ms`);
    client.request(2, params('/app/hello'), '', FCGI_KEEP_CONN);
    assert.equal(parseCgiResponse((await client.response(2)).stdout).status, 200);
    client.close();
  });
});
