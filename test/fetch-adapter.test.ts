// The plain node:http side of the benchmark's comparison: a Fetch app's status, reason, headers (each Set-Cookie separate) and body reach the client as the app gave them.
import assert from 'node:assert/strict';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, test } from 'node:test';
import type { App } from '../src/handler.ts';
import { fetchRequestListener } from '../src/http/fetch-adapter.ts';
import { installLightweightResponse } from '../src/lightweight-response.ts';
import { eventually } from './fixtures/eventually.ts';
import { logged } from './fixtures/log.ts';

// As src/bench/http-app.ts runs it: `new Response(...)` in the app builds the lightweight form.
installLightweightResponse();

const app: App = {
  async fetch(request) {
    const url = new URL(request.url);
    switch (url.pathname) {
      case '/plain':
        return new Response('plain\n');
      case '/made':
        return new Response('made\n', { status: 201, statusText: 'Made Here', headers: [['X-One', '1'], ['x-two', ' 2 ']] });
      case '/cookies': {
        const headers = new Headers({ 'content-type': 'text/plain', 'x-app': 'adapter' });
        headers.append('set-cookie', 'a=1; Path=/');
        headers.append('set-cookie', 'c=3, with comma; Path=/');
        return new Response('cookies\n', { status: 418, headers });
      }
      case '/stream': {
        const parts = ['one ', 'two ', 'three\n'];
        const body = new ReadableStream<Uint8Array>({
          pull(controller) {
            const next = parts.shift();
            if (next === undefined) controller.close();
            else controller.enqueue(new TextEncoder().encode(next));
          },
        });
        return new Response(body, { headers: { 'content-type': 'text/plain' } });
      }
      case '/bad-header':
        return new Response('never\n', { headers: { 'x-bad': 'beyond latin1 \u0100' } });
      default:
        return new Response('not found\n', { status: 404 });
    }
  },
};

let server: http.Server;
let base = '';
before(async () => {
  server = http.createServer(fetchRequestListener(app));
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});
after(() => new Promise<void>((resolve) => server.close(() => resolve())));

test('a string body gets the Fetch default type and its length', async () => {
  const res = await fetch(`${base}/plain`);
  assert.equal(res.status, 200);
  assert.equal(res.headers.get('content-type'), 'text/plain;charset=UTF-8');
  assert.equal(res.headers.get('content-length'), '6');
  assert.equal(await res.text(), 'plain\n');
});

test('the status, its reason and headers given as pairs (values trimmed) reach the client', async () => {
  const res = await fetch(`${base}/made`);
  assert.equal(res.status, 201);
  assert.equal(res.statusText, 'Made Here');
  assert.equal(res.headers.get('x-one'), '1');
  assert.equal(res.headers.get('x-two'), '2');
  assert.equal(await res.text(), 'made\n');
});

test('headers from a Headers object, each Set-Cookie on its own line', async () => {
  const res = await fetch(`${base}/cookies`);
  assert.equal(res.status, 418);
  assert.equal(res.headers.get('x-app'), 'adapter');
  assert.deepEqual(res.headers.getSetCookie(), ['a=1; Path=/', 'c=3, with comma; Path=/']);
  assert.equal(await res.text(), 'cookies\n');
});

test('a stream body is sent as it is produced (chunked)', async () => {
  const res = await fetch(`${base}/stream`);
  assert.equal(res.headers.get('transfer-encoding'), 'chunked');
  assert.equal(await res.text(), 'one two three\n');
});

test('a header value the Headers class refuses gives a 500, not a broken response', async () => {
  const { result: res, lines } = await logged(() => fetch(`${base}/bad-header`));
  assert.equal(res.status, 500);
  assert.equal(await res.text(), 'Internal Server Error\n');
  // Refused where the Response says what is wrong (the real Headers), not by node:http later on
  // (ERR_INVALID_CHAR), which would mean the lightweight headers went out unchecked.
  await eventually(() => lines.join('\n'), /app: request failed: TypeError: Cannot convert argument to a ByteString/);
  assert.doesNotMatch(lines.join('\n'), /ERR_INVALID_CHAR/);
});
