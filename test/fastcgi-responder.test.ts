// The responder over real sockets: every protocol rule of the responder, driven by a raw record client.
import assert from 'node:assert/strict';
import http from 'node:http';
import net from 'node:net';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { encodePairs, decodePairs } from '../src/fastcgi/pairs.ts';
import {
  FCGI_ABORT_REQUEST,
  FCGI_AUTHORIZER,
  FCGI_END_REQUEST,
  FCGI_FILTER,
  FCGI_GET_VALUES,
  FCGI_GET_VALUES_RESULT,
  FCGI_OVERLOADED,
  FCGI_PARAMS,
  FCGI_REQUEST_COMPLETE,
  FCGI_STDIN,
  FCGI_STDERR,
  FCGI_STDOUT,
  FCGI_UNKNOWN_ROLE,
  FCGI_UNKNOWN_TYPE,
} from '../src/fastcgi/protocol.ts';
import { encodeRecord, encodeStream } from '../src/fastcgi/record.ts';
import { Responder, type ResponderOptions } from '../src/fastcgi/responder.ts';
import { startResponderServer, type ResponderServer } from '../src/fastcgi/server.ts';
import type { App, AppContext } from '../src/handler.ts';
import { GlobalResponse, installLightweightResponse } from '../src/lightweight-response.ts';
import { WireClient, parseCgiResponse } from './fastcgi-wire.ts';
import { logged } from './fixtures/log.ts';

// As `cgi-runner fcgi` runs apps: `new Response(...)` builds the lightweight form.
installLightweightResponse();

const get = (uri = '/', extra: Record<string, string> = {}) => ({ REQUEST_METHOD: 'GET', REQUEST_URI: uri, HTTP_HOST: 'example.test', SERVER_PROTOCOL: 'HTTP/1.1', ...extra });

// What an app (or a library it uses) may take from the globals while it loads, before any request.
const fetchAtLoad = fetch;
class AppRequest extends Request {}

// Events the test app reports, so tests can see what the app saw.
const seen: { aborted: string[]; roles: string[] } = { aborted: [], roles: [] };
let releaseSlow: () => void = () => {};

const app: App = {
  async fetch(request: Request, context: AppContext): Promise<Response> {
    const url = new URL(request.url);
    seen.roles.push(context.role);
    switch (url.pathname) {
      case '/hello':
        return new Response('hello\n', { headers: { 'content-type': 'text/plain' } });
      case '/teapot': {
        const headers = new Headers({ 'x-app': 'yes' });
        headers.append('set-cookie', 'a=1; Path=/');
        headers.append('set-cookie', 'b=2; Path=/');
        return new Response('short and stout', { status: 418, headers });
      }
      case '/throw':
        throw new Error('boom from the app');
      case '/reject':
        return Promise.reject(new Error('rejected promise'));
      case '/head-then-body': {
        // An answer that starts at once and ends with what it read of the body (a CGI script that
        // prints its header, then reads stdin).
        const encoder = new TextEncoder();
        return new Response(
          new ReadableStream({
            async start(controller) {
              controller.enqueue(encoder.encode('started;'));
              let n = 0;
              for await (const chunk of request.body!) n += (chunk as Uint8Array).byteLength;
              controller.enqueue(encoder.encode(`read=${n}`));
              controller.close();
            },
          }),
        );
      }
      case '/head-then-fail': {
        // Starts its answer, takes hold of the body, and fails before the body has all come.
        const reader = request.body!.getReader();
        return new Response(
          new ReadableStream({
            async start(controller) {
              controller.enqueue(new TextEncoder().encode('partial;'));
              await reader.read();
              controller.error(new Error('failed half-way'));
            },
          }),
        );
      }
      case '/locked': {
        // A body the app has already taken a reader of: it cannot be sent.
        const locked = new Response(new ReadableStream({ start: (c) => c.close() }));
        locked.body!.getReader();
        return locked;
      }
      case '/echo-size': {
        let n = 0;
        for await (const chunk of request.body!) n += (chunk as Uint8Array).byteLength;
        return new Response(String(n));
      }
      case '/big':
        return new Response(new Uint8Array(Number(url.searchParams.get('n'))).fill(0x61));
      case '/stream':
        return new Response(
          new ReadableStream({
            async start(controller) {
              controller.enqueue(new TextEncoder().encode('first;'));
              await new Promise<void>((resolve) => (releaseSlow = resolve));
              controller.enqueue(new TextEncoder().encode('second'));
              controller.close();
            },
          }),
        );
      case '/wait-abort':
        await new Promise<void>((resolve) => request.signal.addEventListener('abort', () => resolve()));
        seen.aborted.push(url.search);
        return new Response('too late');
      case '/ignores-abort':
        // An app that does not look at request.signal: the abort must not wait for it.
        await sleep(3000);
        return new Response('far too late');
      case '/slow':
        await sleep(Number(url.searchParams.get('ms') ?? 200));
        return new Response('slow done');
      case '/copy': {
        // The everyday ways to copy and forward the Request an app was given.
        const copy = new Request(request, { headers: { 'x-added': 'yes' } });
        return Response.json({ url: copy.url, method: copy.method, added: copy.headers.get('x-added'), isRequest: request instanceof Request && copy instanceof Request });
      }
      case '/forward':
        return fetch(request);
      case '/forward-captured':
        return fetchAtLoad(new AppRequest(request));
      case '/real':
        // What `return fetch(upstream)` hands back: an undici Response, not the lightweight one.
        return new GlobalResponse('from upstream\n', { status: 201, headers: { 'x-upstream': 'yes' } });
      case '/redirect':
        return Response.redirect('https://example.test/next', 301);
      case '/whoami':
        return Response.json({ method: request.method, url: request.url, role: context.role, hasBody: request.body !== null, isRequest: request instanceof Request });
      default:
        return new Response('not found', { status: 404 });
    }
  },
};

async function startServer(options: Partial<ResponderOptions> = {}): Promise<{ port: number; server: ResponderServer; responder: Responder }> {
  const responder = new Responder(app, { accessLog: false, target: 'test-app', ...options });
  const server = await startResponderServer(responder, { kind: 'tcp', host: '127.0.0.1', port: 0 }, 0o660);
  const port = (server.server.address() as net.AddressInfo).port;
  return { port, server, responder };
}

let port: number;
let main: ResponderServer;

before(async () => {
  ({ port, server: main } = await startServer({ maxReqs: 50, maxParamsBytes: 4096 }));
});
after(async () => {
  await main.stop(100);
});

describe('requests and responses', () => {
  test('a GET gets the CGI header block, the body, an empty STDOUT and END_REQUEST', async () => {
    const c = await WireClient.connect(port);
    c.request(1, get('/hello'));
    const res = await c.response(1);
    const parsed = parseCgiResponse(res.stdout);
    assert.equal(parsed.status, 200);
    assert.deepEqual(parsed.headers, [['content-type', 'text/plain']]);
    assert.equal(parsed.body.toString(), 'hello\n');
    assert.equal(res.stdout.toString('latin1').split('\r\n')[0], 'Status: 200 OK');
    const types = res.records.map((r) => [r.type, r.content.length]);
    assert.deepEqual(types.slice(-2), [[FCGI_STDOUT, 0], [FCGI_END_REQUEST, 8]]);
    assert.equal(res.protocolStatus, FCGI_REQUEST_COMPLETE);
    assert.equal(res.appStatus, 0);
    c.close();
  });

  test('status with reason, app headers, and each Set-Cookie on its own line', async () => {
    const c = await WireClient.connect(port);
    c.request(1, get('/teapot'));
    const res = await c.response(1);
    const head = res.stdout.toString('latin1').split('\r\n\r\n')[0].split('\r\n');
    assert.equal(head[0], "Status: 418 I'm a teapot");
    assert.ok(head.includes('set-cookie: a=1; Path=/'));
    assert.ok(head.includes('set-cookie: b=2; Path=/'));
    assert.ok(head.includes('x-app: yes'));
    c.close();
  });

  test('the Request carries method, the URL as the browser saw it, and no body for GET', async () => {
    const c = await WireClient.connect(port);
    c.request(1, { REQUEST_METHOD: 'GET', REQUEST_URI: '/whoami?x=1', HTTP_HOST: 'site.example:8443', HTTPS: 'on' });
    const body = JSON.parse(parseCgiResponse((await c.response(1)).stdout).body.toString());
    assert.deepEqual(body, { method: 'GET', url: 'https://site.example:8443/whoami?x=1', role: 'responder', hasBody: false, isRequest: true });
    c.close();
  });

  test('a real undici Response (a fetch() result, Response.redirect) is sent like any other', async () => {
    const c = await WireClient.connect(port);
    c.request(1, get('/real'));
    c.request(2, get('/redirect'));
    const real = parseCgiResponse((await c.response(1)).stdout);
    assert.equal(real.status, 201);
    assert.deepEqual(real.headers.find(([n]) => n === 'x-upstream'), ['x-upstream', 'yes']);
    assert.equal(real.body.toString(), 'from upstream\n');
    const redirect = parseCgiResponse((await c.response(2)).stdout);
    assert.equal(redirect.status, 301);
    assert.deepEqual(redirect.headers.find(([n]) => n === 'location'), ['location', 'https://example.test/next']);
    c.close();
  });

  test('an app can copy its Request (new Request(request, init)) and forward it with its body (fetch(request))', async () => {
    const upstream = http.createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => res.end(`${req.method} ${req.url} ${req.headers['x-from']} ${Buffer.concat(chunks).toString()}`));
    });
    await new Promise<void>((resolve) => upstream.listen(0, '127.0.0.1', resolve));
    const host = `127.0.0.1:${(upstream.address() as net.AddressInfo).port}`;
    try {
      const c = await WireClient.connect(port);
      c.request(1, get('/copy?q=1', { HTTP_HOST: 'site.example' }));
      assert.deepEqual(JSON.parse(parseCgiResponse((await c.response(1)).stdout).body.toString()), { url: 'http://site.example/copy?q=1', method: 'GET', added: 'yes', isRequest: true });
      c.request(2, get('/forward?to=upstream', { REQUEST_METHOD: 'POST', HTTP_HOST: host, HTTP_X_FROM: 'app', CONTENT_LENGTH: '12' }), 'the request!');
      const forwarded = parseCgiResponse((await c.response(2)).stdout);
      assert.equal(forwarded.status, 200);
      assert.equal(forwarded.body.toString(), 'POST /forward?to=upstream app the request!');
      // The same with a fetch and a Request subclass the app took before its first request.
      c.request(3, get('/forward-captured', { REQUEST_METHOD: 'POST', HTTP_HOST: host, HTTP_X_FROM: 'early', CONTENT_LENGTH: '5' }), 'taken');
      assert.equal(parseCgiResponse((await c.response(3)).stdout).body.toString(), 'POST /forward-captured early taken');
      c.close();
    } finally {
      upstream.close();
    }
  });

  test('HEAD gets the headers and no body', async () => {
    const c = await WireClient.connect(port);
    c.request(1, get('/hello', { REQUEST_METHOD: 'HEAD' }));
    const parsed = parseCgiResponse((await c.response(1)).stdout);
    assert.equal(parsed.status, 200);
    assert.equal(parsed.body.length, 0);
    c.close();
  });

  test('a 3 MiB body streams through STDIN to the app', async () => {
    const c = await WireClient.connect(port);
    const body = Buffer.alloc(3 * 1024 * 1024, 0x7a);
    c.request(1, get('/echo-size', { REQUEST_METHOD: 'POST', CONTENT_LENGTH: String(body.length) }), body);
    assert.equal(parseCgiResponse((await c.response(1, 10_000)).stdout).body.toString(), String(body.length));
    c.close();
  });

  /** A POST of 10 bytes as request 1, of which only the first 5 are sent. */
  async function halfPosted(path: string): Promise<WireClient> {
    const c = await WireClient.connect(port);
    c.begin(1);
    c.params(1, get(path, { REQUEST_METHOD: 'POST', CONTENT_LENGTH: '10' }));
    c.write(encodeStream(FCGI_STDIN, 1, Buffer.from('12345')));
    return c;
  }

  test('an answer that starts before the body has all come waits for the rest of STDIN: nginx stops sending a body once it has a response header', async () => {
    const c = await halfPosted('/head-then-body');
    await sleep(200);
    assert.deepEqual(
      c.records.filter((r) => r.requestId === 1 && r.type === FCGI_STDOUT),
      [],
      'no STDOUT while STDIN is still coming',
    );
    c.write(Buffer.concat([encodeStream(FCGI_STDIN, 1, Buffer.from('67890')), encodeRecord(FCGI_STDIN, 1)]));
    const res = await c.response(1);
    const answer = parseCgiResponse(res.stdout);
    assert.equal(answer.status, 200);
    assert.equal(answer.body.toString(), 'started;read=10');
    c.close();
  });

  test('an app that fails while its answer waits for STDIN: what it wrote, its error, and the end, without waiting for the rest', async () => {
    const c = await halfPosted('/head-then-fail');
    const res = await c.response(1);
    const answer = parseCgiResponse(res.stdout);
    assert.equal(answer.status, 200);
    assert.equal(answer.body.toString(), 'partial;');
    assert.match(res.stderr, /failed half-way/);
    assert.equal(res.appStatus, 1);
    c.close();
  });

  test('an 8 MiB response comes in records of at most 65535 bytes, each padded to 8', async () => {
    const c = await WireClient.connect(port);
    const n = 8 * 1024 * 1024;
    const raw: Buffer[] = [];
    c.socket.on('data', (d) => raw.push(d));
    c.request(1, get(`/big?n=${n}`));
    const res = await c.response(1, 20_000);
    assert.equal(parseCgiResponse(res.stdout).body.length, n);
    assert.ok(res.records.every((r) => r.content.length <= 65535));
    // Walk the raw bytes: every record starts on an 8-byte boundary.
    const all = Buffer.concat(raw);
    let offset = 0;
    while (offset < all.length) {
      assert.equal(offset % 8, 0);
      offset += 8 + all.readUInt16BE(offset + 4) + all[offset + 6];
    }
    assert.equal(offset, all.length);
    c.close();
  });

  test('a streamed body reaches the web server before the stream ends', async () => {
    const c = await WireClient.connect(port);
    c.request(1, get('/stream'));
    await c.waitFor(() => (Buffer.concat(c.records.filter((r) => r.type === FCGI_STDOUT).map((r) => r.content)).includes('first;') ? true : undefined));
    assert.equal(c.records.some((r) => r.type === FCGI_END_REQUEST), false);
    releaseSlow();
    const res = await c.response(1);
    assert.equal(parseCgiResponse(res.stdout).body.toString(), 'first;second');
    c.close();
  });
});

describe('connections', () => {
  test('with FCGI_KEEP_CONN the connection serves request after request', async () => {
    const c = await WireClient.connect(port);
    for (let id = 1; id <= 3; id++) {
      c.request(id, get('/hello'));
      assert.equal(parseCgiResponse((await c.response(id)).stdout).status, 200);
    }
    assert.equal(c.closed, false);
    c.close();
  });

  test('without FCGI_KEEP_CONN the responder closes after END_REQUEST', async () => {
    const c = await WireClient.connect(port);
    c.request(1, get('/hello'), '', 0);
    await c.response(1);
    await c.closedPromise;
    assert.equal(c.closed, true);
  });

  test('multiplexed requests interleave in both directions', async () => {
    const c = await WireClient.connect(port);
    c.begin(1);
    c.begin(2);
    c.params(1, get('/echo-size', { REQUEST_METHOD: 'POST' }));
    c.params(2, get('/slow?ms=1'));
    c.stdin(2);
    c.write(encodeRecord(FCGI_STDIN, 1, Buffer.from('abc')));
    const second = await c.response(2);
    assert.equal(parseCgiResponse(second.stdout).body.toString(), 'slow done');
    assert.equal(c.records.some((r) => r.requestId === 1 && r.type === FCGI_END_REQUEST), false, 'request 1 still waits for its STDIN');
    c.write(Buffer.concat([encodeRecord(FCGI_STDIN, 1, Buffer.from('de')), encodeRecord(FCGI_STDIN, 1)]));
    assert.equal(parseCgiResponse((await c.response(1)).stdout).body.toString(), '5');
    c.close();
  });

  test('a record header fed one byte at a time, and a pair straddling PARAMS records', async () => {
    const c = await WireClient.connect(port);
    const pairs = encodePairs(get('/hello'));
    const bytes = Buffer.concat([
      encodeRecord(1, 7, Buffer.from('0001010000000000', 'hex')),
      encodeRecord(FCGI_PARAMS, 7, pairs.subarray(0, 3)),
      encodeRecord(FCGI_PARAMS, 7, pairs.subarray(3)),
      encodeRecord(FCGI_PARAMS, 7),
      encodeRecord(FCGI_STDIN, 7),
    ]);
    for (const byte of bytes) {
      c.write(Buffer.from([byte]));
      if (byte % 5 === 0) await sleep(0);
    }
    assert.equal(parseCgiResponse((await c.response(7)).stdout).body.toString(), 'hello\n');
    c.close();
  });
});

describe('management records and roles', () => {
  test('GET_VALUES is answered on id 0 with the enforced limits, unknown names omitted', async () => {
    const c = await WireClient.connect(port);
    c.write(encodeRecord(FCGI_GET_VALUES, 0, encodePairs([['FCGI_MAX_CONNS', ''], ['FCGI_MAX_REQS', ''], ['FCGI_MPXS_CONNS', ''], ['NO_SUCH', '']])));
    const record = await c.waitFor(() => c.records.find((r) => r.type === FCGI_GET_VALUES_RESULT));
    assert.equal(record.requestId, 0);
    assert.deepEqual(decodePairs(record.content), { FCGI_MAX_CONNS: '1024', FCGI_MAX_REQS: '50', FCGI_MPXS_CONNS: '1' });
    c.close();
  });

  test('an unknown management type gets FCGI_UNKNOWN_TYPE, and the connection goes on', async () => {
    const c = await WireClient.connect(port);
    c.write(encodeRecord(200, 0, Buffer.from('whatever')));
    const record = await c.waitFor(() => c.records.find((r) => r.type === FCGI_UNKNOWN_TYPE));
    assert.equal(record.content[0], 200);
    c.request(1, get('/hello'));
    assert.equal(parseCgiResponse((await c.response(1)).stdout).status, 200);
    c.close();
  });

  test('a role the responder does not implement gets FCGI_UNKNOWN_ROLE', async () => {
    const c = await WireClient.connect(port);
    c.begin(1, 1, FCGI_FILTER);
    c.params(1, get('/hello'));
    const res = await c.response(1);
    assert.equal(res.protocolStatus, FCGI_UNKNOWN_ROLE);
    assert.equal(res.stdout.length, 0);
    c.close();
  });

  test('the Authorizer role runs the app with no body and context.role = authorizer', async () => {
    const c = await WireClient.connect(port);
    c.begin(1, 1, FCGI_AUTHORIZER);
    c.params(1, get('/whoami'));
    const body = JSON.parse(parseCgiResponse((await c.response(1)).stdout).body.toString());
    assert.equal(body.role, 'authorizer');
    assert.equal(body.hasBody, false);
    c.close();
  });
});

describe('aborts and failures', () => {
  test('FCGI_ABORT_REQUEST aborts request.signal and promptly sends END_REQUEST', async () => {
    const c = await WireClient.connect(port);
    c.request(1, get('/wait-abort?by=abort'));
    await sleep(50);
    c.write(encodeRecord(FCGI_ABORT_REQUEST, 1));
    const res = await c.response(1, 1000);
    assert.equal(res.protocolStatus, FCGI_REQUEST_COMPLETE);
    await sleep(10);
    assert.ok(seen.aborted.includes('?by=abort'));
    // Even from an app that never looks at the signal: END_REQUEST at once, and no STDOUT.
    c.request(3, get('/ignores-abort'));
    await sleep(50);
    const abortedAt = performance.now();
    c.write(encodeRecord(FCGI_ABORT_REQUEST, 3));
    const ignored = await c.response(3, 1000);
    assert.ok(performance.now() - abortedAt < 500, 'END_REQUEST did not wait for the app');
    assert.equal(ignored.stdout.length, 0);
    c.request(2, get('/hello'));
    assert.equal(parseCgiResponse((await c.response(2)).stdout).status, 200);
    c.close();
  });

  test('a closed connection aborts its requests', async () => {
    const c = await WireClient.connect(port);
    c.request(1, get('/wait-abort?by=close'));
    await sleep(50);
    c.close();
    const deadline = Date.now() + 2000;
    while (!seen.aborted.includes('?by=close') && Date.now() < deadline) await sleep(10);
    assert.ok(seen.aborted.includes('?by=close'));
  });

  test('a Response whose body the app already locked gives a 500 and a STDERR message, and the process goes on', async () => {
    const c = await WireClient.connect(port);
    c.request(1, get('/locked'));
    const res = await c.response(1);
    assert.equal(parseCgiResponse(res.stdout).status, 500);
    assert.match(res.stderr, /locked/i);
    c.request(2, get('/hello'));
    assert.equal(parseCgiResponse((await c.response(2)).stdout).status, 200);
    c.close();
  });

  for (const path of ['/throw', '/reject']) {
    test(`an app that ${path === '/throw' ? 'throws' : 'rejects'} gives a 500, a STDERR message, and the connection stays usable`, async () => {
      const c = await WireClient.connect(port);
      c.request(1, get(path));
      const res = await c.response(1);
      assert.equal(parseCgiResponse(res.stdout).status, 500);
      assert.match(res.stderr, path === '/throw' ? /boom from the app/ : /rejected promise/);
      // §3.3 and §6.1: each stream is closed by an empty record of its type, then END_REQUEST, even after an error.
      const tail = res.records.slice(-3).map((r) => [r.type, r.content.length]);
      assert.deepEqual(tail.at(-1), [FCGI_END_REQUEST, 8]);
      assert.deepEqual(tail.slice(0, 2).sort(), [[FCGI_STDOUT, 0], [FCGI_STDERR, 0]]);
      assert.equal(res.appStatus, 1, 'a failed app ends with app status 1, as a failed script exits 1');
      c.request(2, get('/hello'));
      assert.equal(parseCgiResponse((await c.response(2)).stdout).status, 200);
      c.close();
    });
  }

  const badInputs: Array<[string, Buffer]> = [
    ['a wrong version byte', Buffer.from('0206000100000000', 'hex')],
    ['garbage', Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n')],
    ['a truncated name-value pair', Buffer.concat([encodeRecord(1, 1, Buffer.from('0001010000000000', 'hex')), encodeRecord(FCGI_PARAMS, 1, Buffer.from('05ff41', 'hex')), encodeRecord(FCGI_PARAMS, 1)])],
    ['an absurd pair length', Buffer.concat([encodeRecord(1, 1, Buffer.from('0001010000000000', 'hex')), encodeRecord(FCGI_PARAMS, 1, Buffer.from('7fffffffff41', 'hex')), encodeRecord(FCGI_PARAMS, 1)])],
    ['PARAMS beyond the cap', Buffer.concat([encodeRecord(1, 1, Buffer.from('0001010000000000', 'hex')), encodeStream(FCGI_PARAMS, 1, encodePairs([['BIG', 'x'.repeat(5000)]]))])],
    ['a BEGIN_REQUEST of the wrong size', encodeRecord(1, 1, Buffer.from('0001', 'hex'))],
    ['STDOUT sent to the app', encodeRecord(FCGI_STDOUT, 1, Buffer.from('x'))],
  ];
  for (const [name, bytes] of badInputs) {
    test(`${name} closes that connection with a logged reason; another connection is still served`, async () => {
      const other = await WireClient.connect(port);
      const bad = await WireClient.connect(port);
      const { lines } = await logged(async () => {
        bad.write(bytes);
        await bad.closedPromise;
      });
      // One line that names the problem and says what was done about it.
      assert.ok(lines.some((l) => /fastcgi: .+; closing the connection/.test(l)), `no reason logged:\n${lines.join('\n')}`);
      other.request(1, get('/hello'));
      assert.equal(parseCgiResponse((await other.response(1)).stdout).status, 200);
      other.close();
    });
  }

  test('beyond the request cap a request gets FCGI_OVERLOADED instead of waiting', async () => {
    const { port: capped, server } = await startServer({ maxReqs: 2 });
    const c = await WireClient.connect(capped);
    c.request(1, get('/slow?ms=300'));
    c.request(2, get('/slow?ms=300'));
    c.request(3, get('/hello'));
    const third = await c.response(3, 1000);
    assert.equal(third.protocolStatus, FCGI_OVERLOADED);
    assert.equal((await c.response(1)).protocolStatus, FCGI_REQUEST_COMPLETE);
    c.request(4, get('/hello'));
    assert.equal(parseCgiResponse((await c.response(4)).stdout).status, 200);
    c.close();
    await server.stop(100);
  });

  test('connections beyond FCGI_MAX_CONNS are closed at once', async () => {
    const { port: capped, server } = await startServer({ maxConns: 1 });
    const first = await WireClient.connect(capped);
    const second = await WireClient.connect(capped);
    await second.closedPromise;
    first.request(1, get('/hello'));
    assert.equal(parseCgiResponse((await first.response(1)).stdout).status, 200);
    first.close();
    await server.stop(100);
  });
});

describe('graceful stop', () => {
  test('in-flight requests finish, idle connections close, new connections are refused', async () => {
    const { port: p, server } = await startServer();
    const busy = await WireClient.connect(p);
    const idle = await WireClient.connect(p);
    busy.request(1, get('/slow?ms=300'));
    await sleep(50);
    const stopped = server.stop(5000);
    await idle.closedPromise;
    await assert.rejects(WireClient.connect(p));
    const res = await busy.response(1);
    assert.equal(parseCgiResponse(res.stdout).body.toString(), 'slow done');
    await stopped;
    await busy.closedPromise;
  });

  test('past the deadline what is left is aborted', async () => {
    const { port: p, server } = await startServer();
    const c = await WireClient.connect(p);
    c.request(1, get('/wait-abort?by=deadline'));
    await sleep(50);
    const started = Date.now();
    await server.stop(200);
    assert.ok(Date.now() - started < 2000);
    await c.closedPromise;
    await sleep(10);
    assert.ok(seen.aborted.includes('?by=deadline'));
  });
});
