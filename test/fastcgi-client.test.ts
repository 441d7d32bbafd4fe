// The FastCGI client over real sockets: against `cgi-runner fcgi` (multiplexed), against a responder that says FCGI_MPXS_CONNS=0, against real php-fpm; backpressure, aborts, timeouts and errors.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import net from 'node:net';
import path from 'node:path';
import { Readable } from 'node:stream';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { FastCGIClient, FastCGIUpstreamError, type FastCGIResponse } from '../src/fastcgi/client.ts';
import { RecordDecoder } from '../src/fastcgi/decoder.ts';
import { FCGI_ABORT_REQUEST, FCGI_BEGIN_REQUEST, FCGI_END_REQUEST, FCGI_MPXS_CONNS } from '../src/fastcgi/protocol.ts';
import { Responder, type ResponderOptions } from '../src/fastcgi/responder.ts';
import { startResponderServer, type ResponderServer } from '../src/fastcgi/server.ts';
import { makeTempDir, requirePeer, startPhpFpm, startProcess, stop, waitForPath, waitUntilReady, writeShared, type ManagedProcess, type TempDir } from '../src/peers/index.ts';
import upstreamApp, { gate, patternByte, seen } from './fixtures/apps/client-upstream.ts';
import { logged } from './fixtures/log.ts';

const repoRoot = path.resolve(import.meta.dirname, '..');
const appFile = path.join(repoRoot, 'test/fixtures/apps/client-upstream.ts');
const MiB = 1024 * 1024;

const get = (uri: string, extra: Record<string, string> = {}) => ({
  REQUEST_METHOD: 'GET',
  REQUEST_URI: uri,
  SCRIPT_NAME: uri.split('?')[0]!,
  QUERY_STRING: uri.split('?')[1] ?? '',
  HTTP_HOST: 'client.test',
  SERVER_PROTOCOL: 'HTTP/1.1',
  ...extra,
});

async function text(response: FastCGIResponse): Promise<string> {
  let out = '';
  for await (const chunk of response.body) out += chunk;
  return out;
}

async function rejection(promise: Promise<unknown>): Promise<FastCGIUpstreamError> {
  try {
    await promise;
  } catch (err) {
    assert.ok(err instanceof FastCGIUpstreamError, `expected a FastCGIUpstreamError, got ${String(err)}`);
    return err;
  }
  assert.fail('expected the request to fail');
}

interface TapRecord {
  connection: number;
  direction: 'up' | 'down';
  type: number;
  id: number;
}

/** A unix-socket proxy in front of an upstream that decodes every record both ways, per connection. */
async function startTap(dir: string, target: string) {
  const records: TapRecord[] = [];
  const closed = new Set<number>();
  let connections = 0;
  const tapPath = path.join(dir, `tap-${Math.random().toString(36).slice(2)}.sock`);
  const server = net.createServer((down) => {
    const connection = ++connections;
    const up = net.connect(target);
    const watch = (direction: 'up' | 'down') => {
      const decoder = new RecordDecoder((type, id) => records.push({ connection, direction, type, id }));
      return (chunk: Buffer) => decoder.push(chunk);
    };
    down.on('data', watch('up'));
    up.on('data', watch('down'));
    down.pipe(up);
    up.pipe(down);
    const end = () => {
      closed.add(connection);
      down.destroy();
      up.destroy();
    };
    down.on('close', end);
    up.on('close', end);
    down.on('error', () => {});
    up.on('error', () => {});
  });
  await new Promise<void>((resolve) => server.listen(tapPath, resolve));
  return {
    path: tapPath,
    records,
    closed,
    get connections() {
      return connections;
    },
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

/** `cgi-runner fcgi` as a child process on a unix socket. */
async function startChild(socketPath: string, extra: string[] = []): Promise<ManagedProcess> {
  const proc = await startProcess({
    name: 'cgi-runner fcgi',
    command: process.execPath,
    args: ['--import', 'tsx', path.join(repoRoot, 'src/cli.ts'), 'fcgi', '--listen', socketPath, '--app', appFile, '--no-access-log', ...extra],
    cwd: repoRoot,
  });
  await waitUntilReady(proc, (signal) => waitForPath(socketPath, 20_000, signal));
  return proc;
}

/** A responder in this process, so the tests can see what the app saw. */
class NoMultiplexResponder extends Responder {
  override valueOf(name: string): string | undefined {
    // What php-fpm answers: one request per connection.
    return name === FCGI_MPXS_CONNS ? '0' : super.valueOf(name);
  }
}

async function startInProcess(socketPath: string, multiplex: boolean, options: Partial<ResponderOptions> = {}): Promise<ResponderServer> {
  const Kind = multiplex ? Responder : NoMultiplexResponder;
  const responder = new Kind(upstreamApp, { accessLog: false, target: 'client-upstream', ...options });
  return startResponderServer(responder, { kind: 'unix', path: socketPath }, 0o600);
}

/** Waits until `predicate` holds, polling. */
async function until(predicate: () => boolean, what: string, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

let dir: TempDir;
before(async () => {
  dir = await makeTempDir('fcgi-client-');
});
after(async () => {
  await dir?.cleanup();
});

describe('against cgi-runner fcgi (multiplexed)', () => {
  let child: ManagedProcess;
  let socketPath: string;
  before(async () => {
    socketPath = path.join(dir.path, 'child.sock');
    child = await startChild(socketPath);
  });
  after(async () => {
    if (child) await stop(child, 'SIGTERM', 5000);
  });

  test('GET_VALUES once, then 60 concurrent requests over one connection, their records interleaved on it', async () => {
    const tap = await startTap(dir.path, socketPath);
    const client = new FastCGIClient({ address: tap.path });
    try {
      const results = await Promise.all(
        Array.from({ length: 60 }, async (_, n) => {
          const response = await client.request({ params: get(`/app/chunks?tag=r${n}&n=4&ms=3`) });
          return { status: response.status, body: await text(response), connection: response.connectionId };
        }),
      );
      for (const [n, result] of results.entries()) {
        assert.equal(result.status, 200);
        assert.equal(result.body, `r${n}:0;r${n}:1;r${n}:2;r${n}:3;`, 'each response has its own body, nothing crossed');
      }
      assert.deepEqual(client.upstreamValues?.raw, { FCGI_MAX_CONNS: '1024', FCGI_MAX_REQS: '1024', FCGI_MPXS_CONNS: '1' });
      assert.equal(new Set(results.map((r) => r.connection)).size, 1, 'one pooled connection carried them all');
      // Two connections in all: the GET_VALUES probe (closed after the answer) and the pooled one.
      assert.equal(tap.connections, 2);
      const requestConnection = tap.records.find((r) => r.type === FCGI_BEGIN_REQUEST)!.connection;
      const down = tap.records.filter((r) => r.connection === requestConnection && r.direction === 'down').map((r) => r.id);
      const first = down.indexOf(1);
      const last = down.lastIndexOf(1);
      assert.ok(down.slice(first, last).some((id) => id !== 1), 'records of other requests arrived between the first and last record of request 1');
      const ends = tap.records.filter((r) => r.connection === requestConnection && r.type === FCGI_END_REQUEST);
      assert.equal(ends.length, 60);

      // The connection is kept: a later request goes over it again.
      const again = await client.request({ params: get('/app/hello') });
      assert.equal(await text(again), 'hello\n');
      assert.equal(again.connectionId, results[0]!.connection);
      assert.equal(tap.connections, 2);
    } finally {
      client.close();
      await tap.close();
    }
  });

  test('POST bodies of every size reach the app intact, and the app\'s STDERR goes to the log', async () => {
    const client = new FastCGIClient({ address: socketPath });
    try {
      for (const size of [0, 1, 65535, 65536, 3 * MiB + 7]) {
        const bytes = Buffer.alloc(size);
        for (let i = 0; i < size; i++) bytes[i] = patternByte(i);
        const response = await client.request({
          params: get('/app/echo', { REQUEST_METHOD: 'POST', CONTENT_LENGTH: String(size), CONTENT_TYPE: 'application/octet-stream' }),
          body: Readable.from(size > 0 ? [bytes.subarray(0, size >> 1), bytes.subarray(size >> 1)] : []),
        });
        assert.deepEqual(JSON.parse(await text(response)), { size, sha256: createHash('sha256').update(bytes).digest('hex') });
      }
      const { result, lines } = await logged(async () => {
        const response = await client.request({ params: get('/app/throw') });
        return { status: response.status, body: await text(response) };
      });
      assert.equal(result.status, 500);
      assert.ok(
        lines.some((l) => l.includes(`fastcgi: upstream unix:${socketPath} stderr: app: the upstream app failed on purpose`)),
        `expected the app's STDERR line naming the upstream, got:\n${lines.join('\n')}`,
      );
    } finally {
      client.close();
    }
  });

  test('a client that goes away: ABORT_REQUEST on the multiplexed connection, which stays open', async () => {
    const tap = await startTap(dir.path, socketPath);
    const client = new FastCGIClient({ address: tap.path });
    try {
      await text(await client.request({ params: get('/app/hello') }));
      // Before the header: the request promise rejects (499, not logged) and the app sees the abort.
      const controller = new AbortController();
      const pending = client.request({ params: get('/app/wait?tag=before-head'), signal: controller.signal });
      await sleep(100);
      controller.abort();
      assert.equal((await rejection(pending)).status, 499);
      await until(() => child.stderr().includes('upstream-app: aborted wait before-head'), 'the app to see the abort');
      // After the header: the HTTP side destroys the body it was reading.
      const response = await client.request({ params: get('/app/stall?tag=mid-body') });
      assert.equal(response.status, 200);
      response.body.destroy();
      await until(() => child.stderr().includes('upstream-app: aborted stall mid-body'), 'the app to see the abort');
      const aborts = tap.records.filter((r) => r.type === FCGI_ABORT_REQUEST);
      assert.equal(aborts.length, 2);
      assert.equal(tap.closed.size, 1, 'only the probe connection closed');
      // Both aborted ids got their END_REQUEST, and the next request reuses the connection.
      await until(() => tap.records.filter((r) => r.type === FCGI_END_REQUEST).length === 3, 'END_REQUEST of the aborted requests');
      const next = await client.request({ params: get('/app/hello') });
      assert.equal(await text(next), 'hello\n');
      assert.equal(tap.connections, 2);
      assert.equal(client.inFlight, 0);
    } finally {
      client.close();
      await tap.close();
    }
  });
});

describe('against an upstream that does not multiplex (FCGI_MPXS_CONNS=0)', () => {
  let server: ResponderServer;
  let socketPath: string;
  before(async () => {
    socketPath = path.join(dir.path, 'nompx.sock');
    server = await startInProcess(socketPath, false);
  });
  after(async () => {
    await server?.stop(1000);
  });

  test('one request per connection at a time; connections are kept alive and reused', async () => {
    const tap = await startTap(dir.path, socketPath);
    // This upstream serves every connection at once, so the guard against php-fpm's pinned workers
    // (closing an idle connection when another waits long for a first answer) must not fire even
    // on a busy machine. The php-fpm test below exercises that guard.
    const client = new FastCGIClient({ address: tap.path, starvationMs: 10_000 });
    try {
      const batch = () =>
        Promise.all(
          Array.from({ length: 8 }, async (_, n) => {
            const response = await client.request({ params: get(`/app/chunks?tag=b${n}&n=3&ms=5`) });
            return { body: await text(response), connection: response.connectionId };
          }),
        );
      const first = await batch();
      const second = await batch();
      for (const [n, result] of [...first, ...second].entries()) assert.equal(result.body, `b${n % 8}:0;b${n % 8}:1;b${n % 8}:2;`);
      assert.equal(client.upstreamValues?.multiplex, false);
      assert.equal(client.stats.maxInFlightOnOneConnection, 1);
      assert.equal(new Set(first.map((r) => r.connection)).size, 8);
      assert.ok(second.every((r) => first.some((f) => f.connection === r.connection)), 'the second batch reused the first batch\'s connections');
      assert.equal(tap.connections, 9, 'the probe and 8 pooled connections');
      // On every connection each BEGIN_REQUEST follows the previous request's END_REQUEST.
      const open = new Map<number, boolean>();
      for (const record of tap.records) {
        if (record.type === FCGI_BEGIN_REQUEST) {
          assert.ok(!open.get(record.connection), `two requests in flight on connection ${record.connection}`);
          assert.equal(record.id, 1);
          open.set(record.connection, true);
        } else if (record.type === FCGI_END_REQUEST) open.set(record.connection, false);
      }
    } finally {
      client.close();
      await tap.close();
    }
  });

  test('a client that goes away: the connection is closed, and the app sees the abort', async () => {
    const tap = await startTap(dir.path, socketPath);
    const client = new FastCGIClient({ address: tap.path });
    try {
      const controller = new AbortController();
      const pending = client.request({ params: get('/app/wait?tag=nompx'), signal: controller.signal });
      await sleep(100);
      controller.abort();
      assert.equal((await rejection(pending)).status, 499);
      await until(() => seen.aborted.includes('wait nompx'), 'the app to see the abort');
      assert.equal(tap.records.filter((r) => r.type === FCGI_ABORT_REQUEST).length, 0, 'no ABORT_REQUEST without multiplexing');
      await until(() => tap.closed.size === 2, 'the request connection to close');
      assert.equal(await text(await client.request({ params: get('/app/hello') })), 'hello\n');
    } finally {
      client.close();
      await tap.close();
    }
  });
});

describe('backpressure', () => {
  let server: ResponderServer;
  let socketPath: string;
  before(async () => {
    socketPath = path.join(dir.path, 'bp.sock');
    server = await startInProcess(socketPath, true, { stdinHighWaterMark: 256 * 1024 });
  });
  after(async () => {
    await server?.stop(1000);
  });

  test('a request body is read only as fast as the app takes it', async () => {
    const client = new FastCGIClient({ address: socketPath });
    const size = 64 * MiB;
    let pulled = 0;
    const hash = createHash('sha256');
    const body = new Readable({
      highWaterMark: 64 * 1024,
      read() {
        if (pulled >= size) return this.push(null);
        const piece = Buffer.alloc(Math.min(64 * 1024, size - pulled), pulled / 65536);
        hash.update(piece);
        pulled += piece.length;
        this.push(piece);
      },
    });
    const open = gate('upload');
    try {
      const pending = client.request({ params: get('/app/gated-echo?gate=upload', { REQUEST_METHOD: 'POST', CONTENT_LENGTH: String(size) }), body });
      await sleep(300);
      const held = pulled;
      await sleep(200);
      assert.equal(pulled, held, 'nothing more is read while the app reads nothing');
      assert.ok(pulled < 16 * MiB, `only socket buffers' worth was read (${pulled} bytes)`);
      open();
      const response = await pending;
      assert.deepEqual(JSON.parse(await text(response)), { size, sha256: hash.digest('hex') });
    } finally {
      client.close();
    }
  });

  test('a response is produced only as fast as the HTTP side reads it', async () => {
    const client = new FastCGIClient({ address: socketPath });
    const size = 64 * MiB;
    try {
      const response = await client.request({ params: get(`/app/big?bytes=${size}&tag=download`) });
      await sleep(300);
      const produced = seen.produced.get('download')!;
      await sleep(200);
      assert.equal(seen.produced.get('download'), produced, 'the app stopped producing while nobody read');
      assert.ok(produced < 16 * MiB, `only buffers' worth was produced (${produced} bytes)`);
      let received = 0;
      let mismatch = -1;
      for await (const chunk of response.body as AsyncIterable<Buffer>) {
        for (let i = 0; i < chunk.length; i += 4099) if (mismatch < 0 && chunk[i] !== patternByte(received + i)) mismatch = received + i;
        received += chunk.length;
      }
      assert.equal(received, size);
      assert.equal(mismatch, -1, 'the bytes arrived in order, unchanged');
    } finally {
      client.close();
    }
  });
});

describe('timeouts and errors name the upstream', () => {
  let server: ResponderServer;
  let socketPath: string;
  before(async () => {
    socketPath = path.join(dir.path, 'slow.sock');
    server = await startInProcess(socketPath, true, { maxReqs: 2 });
  });
  after(async () => {
    await server?.stop(1000);
  });

  test('connect timeout: 504', async () => {
    // A listener with a full accept queue that never accepts: the kernel drops further SYNs.
    const perl = spawn('perl', [
      '-MSocket',
      '-e',
      'socket(S,PF_INET,SOCK_STREAM,0);bind(S,sockaddr_in(0,inet_aton("127.0.0.1")));listen(S,0);$|=1;print((sockaddr_in(getsockname(S)))[0],"\\n");sleep 30',
    ]);
    try {
      const port = await new Promise<number>((resolve) => perl.stdout.once('data', (d) => resolve(Number(String(d).trim()))));
      const filler = net.connect({ host: '127.0.0.1', port });
      filler.on('error', () => {});
      await new Promise((resolve) => filler.once('connect', resolve));
      const client = new FastCGIClient({ address: `127.0.0.1:${port}`, connectTimeoutMs: 300, multiplex: false });
      const { result: error, lines } = await logged(() => rejection(client.request({ params: get('/x') })));
      assert.equal(error.status, 504);
      assert.ok(lines.some((l) => l.includes(`fastcgi: upstream 127.0.0.1:${port}: connect timed out after 0.3 s`)), lines.join('\n'));
      filler.destroy();
      client.close();
    } finally {
      perl.kill();
    }
  });

  test('first-byte timeout: 504, and the app sees the abort', async () => {
    const client = new FastCGIClient({ address: socketPath, firstByteTimeoutMs: 300, name: 'slow-app' });
    try {
      const t0 = Date.now();
      const { result: error, lines } = await logged(() => rejection(client.request({ params: get('/app/slow?ms=5000&tag=fb') })));
      assert.equal(error.status, 504);
      assert.ok(Date.now() - t0 < 2000);
      assert.ok(lines.some((l) => l.includes('fastcgi: upstream slow-app: timed out after 0.3 s: no response header')), lines.join('\n'));
      await until(() => seen.aborted.includes('slow fb'), 'the app to see the abort');
    } finally {
      client.close();
    }
  });

  test('idle timeout in the middle of a response: the body errors with 504', async () => {
    const client = new FastCGIClient({ address: socketPath, idleTimeoutMs: 300, name: 'stalling-app' });
    try {
      const { result, lines } = await logged(async () => {
        const response = await client.request({ params: get('/app/stall?tag=idle') });
        const chunks: string[] = [];
        const error = await new Promise<Error>((resolve) => {
          response.body.on('data', (chunk) => chunks.push(String(chunk)));
          response.body.on('error', resolve);
          response.body.on('end', () => resolve(new Error('ended normally')));
        });
        return { status: response.status, chunks, error };
      });
      assert.equal(result.status, 200);
      assert.deepEqual(result.chunks, ['first\n']);
      assert.ok(result.error instanceof FastCGIUpstreamError && result.error.status === 504, String(result.error));
      assert.ok(lines.some((l) => l.includes('fastcgi: upstream stalling-app: timed out after 0.3 s of silence in the middle of the response')), lines.join('\n'));
      await until(() => seen.aborted.includes('stall idle'), 'the app to see the abort');
    } finally {
      client.close();
    }
  });

  test('an upstream that is down: 502; one that is overloaded: 503', async () => {
    const missing = path.join(dir.path, 'nobody.sock');
    const down = new FastCGIClient({ address: missing });
    const { result: error, lines } = await logged(() => rejection(down.request({ params: get('/x') })));
    assert.equal(error.status, 502);
    assert.ok(lines.some((l) => l.includes(`fastcgi: upstream unix:${missing}: cannot connect`)), lines.join('\n'));
    down.close();

    // The responder takes 2 requests at a time (FCGI_MAX_REQS=2); the client keeps to that per
    // connection, and the responder answers FCGI_OVERLOADED to a third from another connection.
    const client = new FastCGIClient({ address: socketPath });
    const other = new FastCGIClient({ address: socketPath });
    try {
      const busy = [client.request({ params: get('/app/slow?ms=400') }), client.request({ params: get('/app/slow?ms=400') })];
      await sleep(100);
      const { result: overloaded, lines: overloadLines } = await logged(() => rejection(other.request({ params: get('/app/hello') })));
      assert.equal(overloaded.status, 503);
      assert.ok(overloadLines.some((l) => l.includes(`fastcgi: upstream unix:${socketPath}: overloaded (FCGI_OVERLOADED)`)), overloadLines.join('\n'));
      for (const response of await Promise.all(busy)) assert.equal(await text(response), 'slow done\n');
      assert.equal(client.upstreamValues?.maxReqs, 2);
    } finally {
      client.close();
      other.close();
    }
  });
});

describe('against real php-fpm', () => {
  test('GET, POST, "Primary script unknown" as 404 with its STDERR logged, and 24 concurrent requests on 2 workers', async (t) => {
    if (!requirePeer(t, 'php-fpm')) return;
    const docroot = path.join(dir.path, 'php');
    await (await import('node:fs')).promises.mkdir(docroot, { mode: 0o755 });
    await writeShared(
      path.join(docroot, 'index.php'),
      `<?php
header('X-Powered: php');
$body = file_get_contents('php://input');
echo $_SERVER['REQUEST_METHOD'], ' ', strlen($body), ' ', md5($body), ' ', $_GET['n'] ?? '-', "\\n";
usleep(10000);
`,
    );
    const fpm = await startPhpFpm({ docroot, children: 2 });
    const client = new FastCGIClient({ address: fpm.address });
    const params = (method: string, file: string, extra: Record<string, string> = {}) => ({
      ...get(`/${file}${extra.QUERY_STRING ? '?' + extra.QUERY_STRING : ''}`),
      REQUEST_METHOD: method,
      SCRIPT_FILENAME: path.join(docroot, file),
      DOCUMENT_ROOT: docroot,
      ...extra,
    });
    try {
      const getResponse = await client.request({ params: params('GET', 'index.php', { QUERY_STRING: 'n=7' }) });
      assert.equal(getResponse.status, 200);
      assert.ok(getResponse.headers.some(([name, value]) => name === 'X-Powered' && value === 'php'));
      assert.equal(await text(getResponse), `GET 0 ${createHash('md5').update('').digest('hex')} 7\n`);
      assert.equal(client.upstreamValues?.multiplex, false, 'php-fpm says FCGI_MPXS_CONNS=0');

      const upload = Buffer.alloc(700_000, 'x');
      const post = await client.request({
        params: params('POST', 'index.php', { CONTENT_LENGTH: String(upload.length), CONTENT_TYPE: 'application/octet-stream' }),
        body: Readable.from([upload.subarray(0, 100_000), upload.subarray(100_000)]),
      });
      assert.equal(await text(post), `POST ${upload.length} ${createHash('md5').update(upload).digest('hex')} -\n`);

      const { result: missing, lines } = await logged(async () => {
        const response = await client.request({ params: params('GET', 'missing.php') });
        return { status: response.status, body: await text(response) };
      });
      assert.equal(missing.status, 404);
      assert.match(missing.body, /File not found/);
      assert.ok(lines.some((l) => l.includes(`fastcgi: upstream unix:${fpm.address}`) && l.includes('stderr: Primary script unknown')), lines.join('\n'));

      // php-fpm pins a worker to each kept connection; the pool must not starve the extra ones.
      const t0 = Date.now();
      const bodies = await Promise.all(
        Array.from({ length: 24 }, async (_, n) => text(await client.request({ params: params('GET', 'index.php', { QUERY_STRING: `n=${n}` }) }))),
      );
      for (const [n, body] of bodies.entries()) assert.match(body, new RegExp(` ${n}\\n$`));
      assert.ok(Date.now() - t0 < 10_000, `24 requests took ${Date.now() - t0} ms`);
    } finally {
      client.close();
      await fpm.stop();
    }
  });
});
