// The lightweight Response: behaves as a Response to app code, and gives the responder the same header block as the real one.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { GlobalResponse, installLightweightResponse, lightweightParts } from '../src/lightweight-response.ts';
import { cgiHeaderBlock, plainBody } from '../src/response-output.ts';

installLightweightResponse();

const cases: Array<[string, () => [Response, Response]]> = [
  ['a string body gets text/plain;charset=UTF-8', () => [new Response('hi'), new GlobalResponse('hi')]],
  ['bytes get no content type', () => [new Response(new Uint8Array([1, 2])), new GlobalResponse(new Uint8Array([1, 2]))]],
  ['status, statusText and a header record', () => [new Response('x', { status: 418, statusText: 'Teapot', headers: { 'X-A': '1', 'content-type': 'text/html' } }), new GlobalResponse('x', { status: 418, statusText: 'Teapot', headers: { 'X-A': '1', 'content-type': 'text/html' } })]],
  ['header pairs with two Set-Cookie', () => [new Response(null, { headers: [['set-cookie', 'a=1'], ['set-cookie', 'b=2']] }), new GlobalResponse(null, { headers: [['set-cookie', 'a=1'], ['set-cookie', 'b=2']] })]],
  ['Response.json', () => [Response.json({ a: 1 }), GlobalResponse.json({ a: 1 })]],
  ['Response.json with headers', () => [Response.json([1], { status: 201, headers: { 'x-b': '2' } }), GlobalResponse.json([1], { status: 201, headers: { 'x-b': '2' } })]],
];

const normalize = (head: string) => head.split('\r\n').map((l) => l.replace(/^([^:]+):/, (_, n: string) => n.toLowerCase() + ':')).sort().join('\n');

for (const [name, make] of cases) {
  test(name, async () => {
    const [light, real] = make();
    assert.ok(light instanceof GlobalResponse);
    assert.ok(lightweightParts(light), 'stays lightweight');
    assert.equal(normalize(cgiHeaderBlock(light)), normalize(cgiHeaderBlock(real)));
    const body = plainBody(light);
    const expected = Buffer.from(await real.arrayBuffer());
    assert.deepEqual(Buffer.from(typeof body === 'string' ? Buffer.from(body) : (body ?? new Uint8Array())), expected);
  });
}

test('anything beyond status and body builds the real Response behind it', async () => {
  const res = new Response('body text', { headers: { 'x-a': '1' } });
  assert.equal(res.status, 200);
  assert.equal(res.ok, true);
  assert.equal(res.headers.get('x-a'), '1');
  assert.equal(lightweightParts(res), undefined, 'materialized once headers were read');
  assert.equal(await res.text(), 'body text');
  assert.equal(Object.prototype.toString.call(res), '[object Response]');
});

test('invalid input fails as the real Response would', () => {
  assert.throws(() => new Response('x', { status: 99 }), RangeError);
  assert.throws(() => new Response('x', { status: 204 }), TypeError);
  const bad = new Response('x', { headers: { 'x-bad': 'a\r\nb' } });
  assert.throws(() => cgiHeaderBlock(bad), TypeError);
});

test('a stream body is a real Response at once', async () => {
  const res = new Response(new ReadableStream({ start: (c) => (c.enqueue(new TextEncoder().encode('s')), c.close()) }));
  assert.equal(lightweightParts(res), undefined);
  assert.equal(await res.text(), 's');
});

test('a real Response built from a string still gives its body without a stream, with the lightweight class installed', () => {
  const real = new GlobalResponse('plain body', { headers: { 'x-a': '1' } });
  assert.equal(lightweightParts(real), undefined);
  assert.ok(real instanceof Response, 'a real Response is a Response to app code');
  assert.equal(plainBody(real), 'plain body');
});
