// The fuzzers of `npm run fuzz`, in a short run, and the cases they found, kept as named regression tests.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import { after, before, describe, test } from 'node:test';
import { fetchStrict, startFuzzedServe, type FuzzedServe } from '../src/fuzz/cgi-response.ts';
import { formatResult, runFuzz } from '../src/fuzz/run.ts';
import { Canary, exchange, startFuzzedResponder, type FuzzedResponder } from '../src/fuzz/responder.ts';
import { encodePairs } from '../src/fastcgi/pairs.ts';
import { FCGI_END_REQUEST, FCGI_KEEP_CONN, FCGI_PARAMS, FCGI_RESPONDER, FCGI_STDIN, FCGI_STDOUT } from '../src/fastcgi/protocol.ts';
import { decodeEndRequest, encodeBeginRequest, encodeRecord, encodeStream } from '../src/fastcgi/record.ts';
import path from 'node:path';

// CI runs a few seconds of each target; `npm run fuzz -- --seconds 600` is the long form.
const seconds = Number(process.env.FUZZ_SECONDS ?? 9);

test(`fuzzing the codec, the responder and the CGI path for ${seconds} s finds nothing`, { timeout: (seconds + 60) * 1000 }, async (t) => {
  const report = await runFuzz({ seconds });
  const failed = report.results.filter((r) => r.failed);
  assert.deepEqual(report.problems, []);
  assert.equal(failed.length, 0, failed.map(formatResult).join('\n'));
  // Every property ran, and the canary connection answered after every responder case.
  assert.ok(report.results.length >= 14, `${report.results.length} properties ran`);
  for (const r of report.results) assert.ok(r.runs > 0, `${r.property} never ran`);
  assert.ok(report.canaryRequests > 10, `${report.canaryRequests} canary requests`);
  // Live memory stayed bounded over each target (past the limit it is a problem, asserted above).
  assert.deepEqual(Object.keys(report.memory).sort(), ['cgi', 'codec', 'responder']);
  for (const [target, m] of Object.entries(report.memory)) {
    t.diagnostic(`${target}: live ${(m.liveBeforeBytes / 2 ** 20).toFixed(1)} -> ${(m.liveAfterBytes / 2 ** 20).toFixed(1)} MiB, RSS ${(m.rssBeforeBytes / 2 ** 20).toFixed(0)} -> ${(m.rssAfterBytes / 2 ** 20).toFixed(0)} MiB`);
  }
});

function request(id: number, params: Record<string, string>, body = '', flags = FCGI_KEEP_CONN): Buffer {
  return Buffer.concat([
    encodeBeginRequest(id, FCGI_RESPONDER, flags),
    encodeStream(FCGI_PARAMS, id, encodePairs(params)),
    encodeRecord(FCGI_PARAMS, id),
    encodeStream(FCGI_STDIN, id, Buffer.from(body)),
    encodeRecord(FCGI_STDIN, id),
  ]);
}

describe('regressions found by the responder fuzzer', () => {
  let target: FuzzedResponder;
  let canary: Canary;
  before(async () => {
    target = await startFuzzedResponder();
    canary = await Canary.open(target.socketPath);
  });
  after(async () => {
    canary.close();
    await target.close();
  });

  test('a web server that half-closes after its request is treated as gone: the request is dropped and the connection released', async () => {
    // The fuzzer first sent a streamed request and half-closed at once, and got no END_REQUEST. That is
    // the rule, not a bug: nginx never half-closes, and a closed side is how a client that left shows up.
    const e = await exchange(target.socketPath, [request(1, { REQUEST_METHOD: 'GET', REQUEST_URI: '/stream' }, '', 0)]);
    assert.equal(e.closed, true);
    assert.equal(e.records.some((r) => r.type === FCGI_END_REQUEST), false);
    assert.equal(target.responder.activeRequests, 0);
    await canary.check();
    assert.deepEqual(target.problems, []);
  });

  test('a method that is not a token (GE\\t) fails in the app with a 500 and END_REQUEST; the connection goes on', async () => {
    // Found by changing one byte of "GET": the app's Request cannot be built, which is the app's 500, not a crash.
    const bytes = Buffer.concat([request(1, { REQUEST_METHOD: 'GE\t', REQUEST_URI: '/echo' }, 'abc'), request(2, { REQUEST_METHOD: 'GET', REQUEST_URI: '/hello' })]);
    const e = await exchange(target.socketPath, [bytes], { keepOpenUntil: (x) => x.records.filter((r) => r.type === FCGI_END_REQUEST).length === 2 });
    const out = (id: number) => Buffer.concat(e.records.filter((r) => r.requestId === id && r.type === FCGI_STDOUT).map((r) => r.content)).toString();
    assert.match(out(1), /^Status: 500/);
    assert.match(out(2), /^Status: 200[\s\S]*hello\n$/);
    const end = e.records.find((r) => r.requestId === 1 && r.type === FCGI_END_REQUEST)!;
    assert.equal(decodeEndRequest(end.content).protocolStatus, 0);
    await canary.check();
  });

  test('PARAMS over the cap close that connection only', async () => {
    const big = request(1, { REQUEST_METHOD: 'GET', REQUEST_URI: '/hello', HTTP_X_BIG: 'x'.repeat(8192) });
    const e = await exchange(target.socketPath, [big], { keepOpenUntil: () => false, timeoutMs: 2000 });
    assert.equal(e.closed, true);
    assert.equal(e.records.length, 0);
    await canary.check();
  });
});

describe('regressions found by the CGI fuzzer', () => {
  let target: FuzzedServe;
  before(async () => {
    target = await startFuzzedServe();
  });
  after(() => target.close());

  const serve = async (output: string) => {
    const name = `case-${Math.random().toString(36).slice(2)}`;
    fs.writeFileSync(path.join(target.casesDir, name), output, 'latin1');
    return fetchStrict(target.port, `/cgi-bin/emit?${name}`);
  };

  test('a script that declares a Content-Length and writes no body: the head arrives, then the connection is cut', async () => {
    // Found by the fuzzer as "Content-Length: 20\n\n": the head was stored by writeHead but never sent, and
    // the client saw a connection closed without any answer ("socket hang up").
    const got = await serve('Content-Length: 20\n\n');
    assert.equal(got.error, undefined);
    assert.equal(got.status, 200);
    assert.equal(got.cut, true);
    assert.equal(got.body.length, 0);
  });

  test('a script that writes part of its Content-Length: that part, then the cut', async () => {
    const got = await serve('Content-Type: text/plain\nContent-Length: 20\n\nonly ten b');
    assert.equal(got.status, 200);
    assert.equal(got.cut, true);
    assert.equal(got.body.toString(), 'only ten b');
  });

  test('the server still answers on a new connection after each of those, and logged no internal error', async () => {
    const got = await serve('Content-Type: text/plain\n\nfine\n');
    assert.equal(got.status, 200);
    assert.equal(got.body.toString(), 'fine\n');
    // And a raw client sees a well-formed head for a cut response too.
    const raw = await new Promise<string>((resolve) => {
      fs.writeFileSync(path.join(target.casesDir, 'raw'), 'Content-Length: 3\n\n');
      const socket = net.connect(target.port, '127.0.0.1');
      let text = '';
      socket.on('data', (c) => (text += c.toString('latin1')));
      socket.on('close', () => resolve(text));
      socket.write('GET /cgi-bin/emit?raw HTTP/1.1\r\nHost: x\r\n\r\n');
    });
    assert.match(raw, /^HTTP\/1\.1 200 OK\r\n[\s\S]*content-length: 3\r\n[\s\S]*\r\n\r\n$/i);
    assert.deepEqual(target.problems(), []);
  });
});
