// The load generator: its response parser, the open-loop schedule against a slow fake target (coordinated omission corrected), and error counting.
import assert from 'node:assert/strict';
import http from 'node:http';
import net from 'node:net';
import type { AddressInfo } from 'node:net';
import { after, before, describe, test } from 'node:test';
import { ResponseParser, type ParsedResponse } from '../src/bench/http-parser.ts';
import { runLoad } from '../src/bench/loadgen.ts';

function parseAll(bytes: string, pieces: 'whole' | 'bytes'): ParsedResponse[] {
  const out: ParsedResponse[] = [];
  const parser = new ResponseParser((r) => out.push(r), true);
  const buf = Buffer.from(bytes, 'latin1');
  if (pieces === 'whole') parser.execute(buf);
  else for (let i = 0; i < buf.length; i++) parser.execute(buf.subarray(i, i + 1));
  parser.finish();
  return out;
}

describe('response parser', () => {
  const stream =
    'HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 6\r\n\r\nhello\n' +
    'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nhel\r\n3\r\nlo\n\r\n0\r\nX-Trailer: 1\r\n\r\n' +
    'HTTP/1.1 204 No Content\r\n\r\n' +
    'HTTP/1.1 500 Internal Server Error\r\ncontent-length: 4\r\nConnection: close\r\n\r\nfail';
  for (const pieces of ['whole', 'bytes'] as const) {
    test(`content-length, chunked with extensions and trailers, 204, close (${pieces})`, () => {
      const rs = parseAll(stream, pieces);
      assert.deepEqual(
        rs.map((r) => [r.status, r.body?.toString(), r.keepAlive]),
        [
          [200, 'hello\n', true],
          [200, 'hello\n', true],
          [204, '', true],
          [500, 'fail', false],
        ],
      );
    });
  }

  test('a body delimited by the end of the connection', () => {
    const rs = parseAll('HTTP/1.0 200 OK\r\n\r\nhello\n', 'bytes');
    assert.deepEqual(rs.map((r) => [r.status, r.body?.toString(), r.keepAlive]), [[200, 'hello\n', false]]);
  });

  test('a truncated response is an error at end of stream', () => {
    const parser = new ResponseParser(() => {}, false);
    parser.execute(Buffer.from('HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhel'));
    assert.throws(() => parser.finish(), /closed in the middle/);
  });
});

/** A server that answers one request at a time, each after `serviceMs`: capacity 1000/serviceMs per second. */
function slowServer(serviceMs: number): http.Server {
  let busyUntil = 0;
  return http.createServer((_req, res) => {
    const now = Date.now();
    const start = Math.max(now, busyUntil);
    busyUntil = start + serviceMs;
    setTimeout(() => res.end('hello\n'), busyUntil - now);
  });
}

function listen(server: http.Server | net.Server): Promise<string> {
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(`http://127.0.0.1:${(server.address() as AddressInfo).port}/`)));
}

describe('open-loop schedule on a slow fake target (20 ms per request, one at a time)', () => {
  const server = slowServer(20);
  let url = '';
  before(async () => {
    url = await listen(server);
  });
  after(() => {
    server.closeAllConnections();
    server.close();
  });

  test('closed loop: latency is the service time, because the generator waits (coordinated omission)', async () => {
    const r = await runLoad({ url, connections: 1, durationMs: 1000, expectBody: 'hello\n' });
    assert.equal(r.errors, 0);
    const s = r.latency.summary();
    assert.ok(s.p50 >= 19 && s.p50 < 40, `closed-loop p50 ${s.p50} ms should be about the 20 ms service time`);
    assert.ok(s.p99 < 80, `closed-loop p99 ${s.p99} ms`);
  });

  test('below capacity (20 req/s): the schedule is kept and nothing queues', async () => {
    const r = await runLoad({ url, connections: 1, durationMs: 1000, rate: 20, expectBody: 'hello\n' });
    assert.equal(r.errors, 0);
    assert.equal(r.unsent, 0);
    assert.ok(r.requests >= 19 && r.requests <= 21, `${r.requests} requests in 1 s at 20 req/s`);
    const s = r.latency.summary();
    assert.ok(s.p50 >= 19 && s.p50 < 40, `p50 ${s.p50} ms should be about the service time`);
  });

  test('above capacity (100 req/s against 50): latency from the intended send time grows with the queue', async () => {
    const r = await runLoad({ url, connections: 1, durationMs: 1000, rate: 100, expectBody: 'hello\n' });
    assert.equal(r.errors, 0);
    // About 50 answered; the rest were due but never found a free connection.
    assert.ok(r.requests >= 35 && r.requests <= 55, `${r.requests} answered`);
    assert.ok(r.unsent >= 40, `${r.unsent} never sent`);
    const s = r.latency.summary();
    // Request k is due at 10k ms and answered at about 20(k+1) ms: its wait grows by 10 ms per request,
    // so the median is hundreds of ms, while a closed loop (or wrk without correction) would report 20 ms.
    assert.ok(s.p50 > 200, `open-loop p50 ${s.p50} ms should show the queue`);
    assert.ok(s.max > 450, `open-loop max ${s.max} ms should reach about half the run`);
    assert.ok(s.p50 > 10 * 20, 'queueing dominates the service time');
  });

  test('more connections absorb the same rate when the server runs them in parallel', async () => {
    const parallel = http.createServer((_req, res) => setTimeout(() => res.end('hello\n'), 20));
    const u = await listen(parallel);
    try {
      const r = await runLoad({ url: u, connections: 4, durationMs: 1000, rate: 100, expectBody: 'hello\n' });
      assert.equal(r.errors, 0);
      assert.equal(r.unsent, 0);
      assert.ok(r.requests >= 95 && r.requests <= 101, `${r.requests} requests`);
      assert.ok(r.latency.percentileMs(50) < 40, `p50 ${r.latency.percentileMs(50)} ms`);
    } finally {
      parallel.closeAllConnections();
      parallel.close();
    }
  });
});

describe('errors', () => {
  test('wrong status and wrong body are counted per kind, and the run goes on', async () => {
    let n = 0;
    const server = http.createServer((_req, res) => {
      n++;
      if (n % 3 === 0) res.writeHead(500).end('hello\n');
      else if (n % 3 === 1) res.end('hello\n');
      else res.end('bye\n');
    });
    const url = await listen(server);
    try {
      const r = await runLoad({ url, connections: 2, durationMs: 300, expectBody: 'hello\n' });
      assert.ok(r.requests > 30);
      assert.ok(r.errorKinds['status 500']! > 0 && r.errorKinds['unexpected body']! > 0, JSON.stringify(r.errorKinds));
      assert.equal(r.errors, r.errorKinds['status 500']! + r.errorKinds['unexpected body']!);
    } finally {
      server.closeAllConnections();
      server.close();
    }
  });

  test('a server that drops connections mid-response: errors counted, connections reopened', async () => {
    let n = 0;
    const server = net.createServer((socket) => {
      socket.on('data', () => {
        n++;
        if (n % 2 === 0) socket.destroy();
        else socket.write('HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nhello\n');
      });
      socket.on('error', () => {});
    });
    const url = await listen(server);
    try {
      const r = await runLoad({ url, connections: 1, durationMs: 300, expectBody: 'hello\n' });
      assert.ok(r.requests - r.errors > 10, `${r.requests - r.errors} answered`);
      assert.ok(r.errors > 10, `${r.errors} errors`);
    } finally {
      server.close();
    }
  });

  test('nothing listening: the run fails at once with a bench: message', async () => {
    const probe = net.createServer();
    const url = await listen(probe);
    await new Promise((r) => probe.close(r));
    await assert.rejects(runLoad({ url, connections: 2, durationMs: 200 }), /bench: cannot connect/);
  });
});
