// The objects made for every request (the HTTP front's request, an app's request and context, over node:http and FastCGI) hold no accessor of their own: V8 keeps an object's own getter in an old-generation AccessorPair, which kept every request's objects alive through young-generation collections (scavenges of 10 to 20 ms, everything promoted).
import assert from 'node:assert/strict';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { test } from 'node:test';
import { FastCGIClient } from '../src/fastcgi/client.ts';
import { Responder } from '../src/fastcgi/responder.ts';
import { startResponderServer } from '../src/fastcgi/server.ts';
import type { App, AppContext } from '../src/handler.ts';
import { fetchRequestListener } from '../src/http/fetch-adapter.ts';
import { createHttpFront, type RouteRequest } from '../src/http/server.ts';

/** The keys (symbols too) of the object's own properties that are accessors (a getter or a setter). */
function ownAccessors(object: object): string[] {
  const descriptors = Object.getOwnPropertyDescriptors(object);
  return Reflect.ownKeys(descriptors)
    .filter((key) => descriptors[key as string]!.get !== undefined || descriptors[key as string]!.set !== undefined)
    .map(String);
}

/**
 * The objects an app's lazy Request is made of: itself and what it was made from (its own
 * properties that are objects, such as its init; a getter there costs the same).
 */
function requestParts(request: Request): object[] {
  const parts: object[] = [request];
  for (const key of Reflect.ownKeys(request)) {
    const value = (request as unknown as Record<PropertyKey, unknown>)[key];
    if (typeof value === 'object' && value !== null) parts.push(value);
  }
  return parts;
}

/**
 * The one request the app saw: no accessor of its own on the request, its parts or the context;
 * the context's signal found wherever a getter in a literal would have been (through a derived
 * object and a Proxy), and the same as the request's.
 */
function checkedAppRequest(): { request: Request; context: AppContext } {
  assert.equal(seen.length, 1);
  const { request, context } = seen[0]!;
  assert.ok(requestParts(request).length > 1, "the lazy request's init is among its parts");
  for (const part of requestParts(request)) assert.deepEqual(ownAccessors(part), []);
  assert.deepEqual(ownAccessors(context), []);
  assert.ok(context.signal instanceof AbortSignal);
  assert.equal((Object.create(context) as AppContext).signal, context.signal);
  assert.equal(new Proxy(context, {}).signal, context.signal);
  assert.equal(request.signal, context.signal);
  return { request, context };
}

function get(port: number, path: string): Promise<number> {
  return new Promise((resolve, reject) => {
    http
      .get({ host: '127.0.0.1', port, path, agent: false }, (res) => {
        res.resume();
        res.on('end', () => resolve(res.statusCode!));
      })
      .on('error', reject);
  });
}

const seen: Array<{ request: Request; context: AppContext }> = [];
const app: App = {
  fetch(request, context) {
    seen.push({ request, context });
    return new Response('ok\n');
  },
};

test('the HTTP front: the request a route gets', async () => {
  const requests: RouteRequest[] = [];
  const front = createHttpFront({
    routes: [
      {
        prefix: '/r',
        handle(request) {
          requests.push(request);
          request.error(404);
        },
      },
    ],
  });
  const { port } = await front.listen(0, '127.0.0.1');
  try {
    assert.equal(await get(port, '/r'), 404);
  } finally {
    await front.stop(1000);
  }
  assert.equal(requests.length, 1);
  assert.deepEqual(ownAccessors(requests[0]!), []);
  assert.equal(requests[0]!.redirects, 0);
});

test("an app's request and context on node:http (the fetch adapter)", async () => {
  seen.length = 0;
  const server = http.createServer(fetchRequestListener(app));
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  try {
    assert.equal(await get((server.address() as AddressInfo).port, '/a'), 200);
  } finally {
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }
  const { context } = checkedAppRequest();
  // Absent outside FastCGI, as AppContext says.
  assert.equal('stderr' in context, false);
  assert.equal('requestId' in context, false);
});

test("an app's request and context over FastCGI (the responder)", async () => {
  seen.length = 0;
  const responder = new Responder(app, { accessLog: false, target: 'per-request-objects' });
  const server = await startResponderServer(responder, { kind: 'tcp', host: '127.0.0.1', port: 0 }, 0o660);
  const client = new FastCGIClient({ address: { kind: 'tcp', host: '127.0.0.1', port: (server.server.address() as AddressInfo).port } });
  try {
    const response = await client.request({ params: { REQUEST_METHOD: 'GET', SCRIPT_NAME: '/f', REQUEST_URI: '/f', SERVER_PROTOCOL: 'HTTP/1.1' } });
    response.body.resume();
    await new Promise((resolve) => response.body.once('end', resolve));
    assert.equal(response.status, 200);
  } finally {
    client.close();
    await server.stop(100);
  }
  const { context } = checkedAppRequest();
  assert.equal(context.role, 'responder');
  assert.equal(typeof context.requestId, 'number');
});
