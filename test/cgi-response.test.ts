// What the client gets for each form of CGI response (RFC 3875 §6): documents, Status, local and client redirects, broken framing from the script, HEAD, malformed output, and nph- scripts.
import assert from 'node:assert/strict';
import { Readable } from 'node:stream';
import { after, before, describe, test } from 'node:test';
import { CgiHeadParser } from '../src/cgi/response.ts';
import { sendResponse } from '../src/http/cgi-response-writer.ts';
import { createHttpFront } from '../src/http/server.ts';
import { captureLog, get, rawExchange, rawRequest, startCgiServer, type CgiServer } from './cgi-fixture.ts';
import { eventually } from './fixtures/eventually.ts';

const sh = (body: string) => `#!/bin/sh\n${body}\n`;

const scripts: Record<string, string> = {
  'lf.sh': sh(`printf 'Content-Type: text/plain\\n\\nlf body\\n'`),
  'crlf.sh': sh(`printf 'Content-Type: text/plain\\r\\nX-One: 1\\r\\n\\r\\ncrlf body\\n'`),
  'mixed-case.sh': sh(`printf 'content-TYPE: text/html\\nSTATUS: 201 Made It\\nx-lower: yes\\n\\n<p>ok</p>'`),
  'status.sh': sh(`printf 'Status: 418 Short And Stout\\nContent-Type: text/plain\\n\\nteapot\\n'`),
  'status-code-only.sh': sh(`printf 'Status: 404\\nContent-Type: text/plain\\n\\nnot here\\n'`),
  'cookies.sh': sh(`printf 'Content-Type: text/plain\\nSet-Cookie: a=1; Path=/\\nSet-Cookie: b=2\\n\\ncookies\\n'`),
  'local.sh': sh(`printf 'Location: /cgi-bin/target.sh/extra?from=local\\n\\nthis body is dropped'`),
  'target.sh': sh(`printf 'Content-Type: text/plain\\nX-Target: yes\\n\\nmethod=%s path=%s query=%s length=%s redirect_url=%s\\n' "$REQUEST_METHOD" "$PATH_INFO" "$QUERY_STRING" "\${CONTENT_LENGTH-unset}" "$REDIRECT_URL"`),
  'loop.sh': sh(`printf 'Location: /cgi-bin/loop.sh\\n\\n'`),
  'absolute.sh': sh(`printf 'Location: https://example.com/elsewhere\\n\\n'`),
  'relative-301.sh': sh(`printf 'Status: 301 Moved\\nLocation: /cgi-bin/target.sh\\nContent-Type: text/plain\\n\\nmoved\\n'`),
  'protocol-relative.sh': sh(`printf 'Location: //evil.example/\\n\\n'`),
  'long-cl.sh': sh(`printf 'Content-Type: text/plain\\nContent-Length: 5\\n\\n0123456789'`),
  'short-cl.sh': sh(`printf 'Content-Type: text/plain\\nContent-Length: 100\\n\\nshort'`),
  'bad-cl.sh': sh(`printf 'Content-Type: text/plain\\nContent-Length: 12abc\\n\\nbody\\n'`),
  'te.sh': sh(`printf 'Content-Type: text/plain\\nTransfer-Encoding: chunked\\nConnection: close\\n\\nnot chunked at all\\n'`),
  'head.sh': sh(`printf 'Content-Type: text/plain\\nX-Method: %s\\n\\nbody that HEAD must not see\\n' "$REQUEST_METHOD"`),
  'malformed.sh': sh(`printf 'this is not a header\\n\\nbody'`),
  'folded.sh': sh(`printf 'Content-Type: text/plain\\n continued\\n\\nbody'`),
  'bad-status.sh': sh(`printf 'Status: two hundred\\n\\nbody'`),
  'injection.sh': sh(`printf 'Content-Type: text/plain\\nX-Evil: a\\rSet-Cookie: pwned=1\\n\\nbody'`),
  'silent.sh': sh(`echo 'going away' >&2; exit 3`),
  'half-head.sh': sh(`printf 'Content-Type: text/plain\\n'`),
  'huge-head.sh': `#!/usr/bin/perl\nprint "X-Big: ", "a" x 70000, "\\n\\nbody";\n`,
  'http-line.sh': sh(`printf 'HTTP/1.1 200 OK\\r\\nContent-Type: text/plain\\r\\n\\r\\nbody'`),
  'nph-raw.sh': sh(`printf 'HTTP/1.1 299 Custom Reason\\r\\nX-Raw: 1\\r\\n\\r\\nraw body\\n'`),
  'nph-own.sh': sh(`printf 'HTTP/1.0 200 OK\\r\\nconnection: close\\r\\ncontent-length: 3\\r\\n\\r\\nown'`),
  'nph-bad.sh': sh(`printf 'Content-Type: text/plain\\n\\nnot an nph response'`),
  'stderr.sh': sh(`echo 'first line' >&2; printf 'second\\r\\nthird' >&2; printf 'Content-Type: text/plain\\n\\nok\\n'`),
  'no-content.sh': sh(`printf 'Status: 204 No Content\\n\\nignored body'`),
};

describe('CGI responses', () => {
  let server: CgiServer;
  let port: number;
  before(async () => {
    server = await startCgiServer(scripts);
    port = server.port;
  });
  after(() => server?.close());

  test('a document: LF line ends', async () => {
    const r = await get(port, '/cgi-bin/lf.sh');
    assert.equal(r.status, 200);
    assert.equal(r.headers['content-type'], 'text/plain');
    assert.equal(r.body.toString(), 'lf body\n');
    assert.ok(r.complete);
  });

  test('a document: CRLF line ends', async () => {
    const r = await get(port, '/cgi-bin/crlf.sh');
    assert.equal(r.status, 200);
    assert.equal(r.headers['x-one'], '1');
    assert.equal(r.body.toString(), 'crlf body\n');
  });

  test('header names are case-insensitive, Status included', async () => {
    const r = await get(port, '/cgi-bin/mixed-case.sh');
    assert.equal(r.status, 201);
    assert.equal(r.reason, 'Made It');
    assert.equal(r.headers['content-type'], 'text/html');
    assert.equal(r.headers['x-lower'], 'yes');
    assert.equal(r.headers.status, undefined, 'Status is not passed on as a header');
  });

  test('Status sets the code and the reason', async () => {
    const r = await get(port, '/cgi-bin/status.sh');
    assert.equal(r.status, 418);
    assert.equal(r.reason, 'Short And Stout');
    assert.equal(r.body.toString(), 'teapot\n');
    const plain = await get(port, '/cgi-bin/status-code-only.sh');
    assert.equal(plain.status, 404);
    assert.equal(plain.reason, 'Not Found');
  });

  test('repeated headers stay separate (Set-Cookie)', async () => {
    const r = await get(port, '/cgi-bin/cookies.sh');
    assert.match(r.rawHead, /\r\nSet-Cookie: a=1; Path=\/\r\n/);
    assert.match(r.rawHead, /\r\nSet-Cookie: b=2\r\n/);
  });

  test('a local redirect is served internally, as a GET without the body', async () => {
    const r = await rawRequest(port, 'POST /cgi-bin/local.sh HTTP/1.1\nHost: x\nContent-Length: 4\nConnection: close\n\nabcd');
    assert.equal(r.status, 200);
    assert.equal(r.headers.location, undefined);
    assert.equal(r.headers['x-target'], 'yes');
    assert.equal(r.body.toString(), 'method=GET path=/extra query=from=local length=unset redirect_url=/cgi-bin/local.sh\n');
  });

  test('a local redirect loop stops after 10 with a 500', async () => {
    const log = captureLog();
    try {
      const r = await get(port, '/cgi-bin/loop.sh');
      assert.equal(r.status, 500);
      await eventually(() => log.text(), /more than 10 local redirects/);
    } finally {
      log.restore();
    }
  });

  test('an absolute Location without a body gives 302', async () => {
    const r = await get(port, '/cgi-bin/absolute.sh');
    assert.equal(r.status, 302);
    assert.equal(r.headers.location, 'https://example.com/elsewhere');
  });

  test('a Location with other fields is a client redirect, with its Status', async () => {
    const r = await get(port, '/cgi-bin/relative-301.sh');
    assert.equal(r.status, 301);
    assert.equal(r.headers.location, '/cgi-bin/target.sh');
    assert.equal(r.body.toString(), 'moved\n');
  });

  test('"//host" is not a local path: a client redirect', async () => {
    const r = await get(port, '/cgi-bin/protocol-relative.sh');
    assert.equal(r.status, 302);
    assert.equal(r.headers.location, '//evil.example/');
  });

  test("the script's Content-Length cannot break the connection", async () => {
    const next = 'GET /cgi-bin/lf.sh HTTP/1.1\nHost: x\nConnection: close\n\n';
    // Too long a body: the excess is cut, and the next response on the connection is intact.
    const [long, after1] = await rawExchange(port, ['GET /cgi-bin/long-cl.sh HTTP/1.1\nHost: x\n\n', next]);
    assert.equal(long!.status, 200);
    assert.equal(long!.body.toString(), '01234');
    assert.equal(after1!.body.toString(), 'lf body\n');
    // An invalid one is dropped: the body is framed by the server (chunked, or with the length it
    // counted when the script had finished before the response started).
    const [bad, after2] = await rawExchange(port, ['GET /cgi-bin/bad-cl.sh HTTP/1.1\nHost: x\n\n', next]);
    assert.ok(
      bad!.headers['content-length'] === undefined || bad!.headers['content-length'] === String(bad!.body.length),
      `Content-Length ${bad!.headers['content-length']} for ${bad!.body.length} bytes`,
    );
    assert.equal(bad!.body.toString(), 'body\n');
    assert.equal(after2!.body.toString(), 'lf body\n');
    // Too short: the connection is closed, so the client sees a cut response rather than waiting.
    const short = await rawRequest(port, 'GET /cgi-bin/short-cl.sh HTTP/1.1\nHost: x\n\n');
    assert.equal(short.headers['content-length'], '100');
    assert.equal(short.complete, false);
  });

  test("the script's Transfer-Encoding and Connection are not passed on", async () => {
    const [r, next] = await rawExchange(port, ['GET /cgi-bin/te.sh HTTP/1.1\nHost: x\n\n', 'GET /cgi-bin/lf.sh HTTP/1.1\nHost: x\nConnection: close\n\n']);
    assert.equal(r!.body.toString(), 'not chunked at all\n');
    assert.ok(r!.complete);
    assert.equal(next!.body.toString(), 'lf body\n');
  });

  test('HEAD gets the headers and no body, and the connection stays usable', async () => {
    const [head, next] = await rawExchange(port, ['HEAD /cgi-bin/head.sh HTTP/1.1\nHost: x\n\n', 'GET /cgi-bin/lf.sh HTTP/1.1\nHost: x\nConnection: close\n\n']);
    assert.equal(head!.status, 200);
    assert.equal(head!.headers['x-method'], 'HEAD');
    assert.equal(head!.body.length, 0);
    assert.equal(next!.body.toString(), 'lf body\n');
  });

  test('204 sends no body', async () => {
    const [r, next] = await rawExchange(port, ['GET /cgi-bin/no-content.sh HTTP/1.1\nHost: x\n\n', 'GET /cgi-bin/lf.sh HTTP/1.1\nHost: x\nConnection: close\n\n']);
    assert.equal(r!.status, 204);
    assert.equal(next!.body.toString(), 'lf body\n');
  });

  for (const [script, reason] of [
    ['malformed.sh', /malformed header line "this is not a header"/],
    ['folded.sh', /line folding/],
    ['bad-status.sh', /invalid Status "two hundred"/],
    ['injection.sh', /X-Evil holds a control character/],
    ['silent.sh', /wrote no output \(exit status 3\)/],
    ['half-head.sh', /ended inside the header block/],
    ['huge-head.sh', /header block is larger than 65536 bytes/],
    ['http-line.sh', /malformed header line "HTTP\/1.1 200 OK"/],
    ['nph-bad.sh', /nph- script must start with an HTTP\/1.x status line/],
  ] as const) {
    test(`${script}: 502, and the reason in the log`, async () => {
      const log = captureLog();
      try {
        const r = await get(port, `/cgi-bin/${script}`);
        assert.equal(r.status, 502);
        assert.doesNotMatch(r.body.toString(), /body|pwned/);
        await eventually(() => log.text(), reason);
        await eventually(() => log.text(), new RegExp(`/cgi-bin/${script.replace('.', '\\.')}`));
      } finally {
        log.restore();
      }
    });
  }

  test('an nph- script writes the whole response itself; the connection then closes', async () => {
    // Nothing delimits the body but the end of the connection, which the client is told about.
    const r = await rawRequest(port, 'GET /cgi-bin/nph-raw.sh HTTP/1.1\nHost: x\n\n');
    assert.equal(r.rawHead, 'HTTP/1.1 299 Custom Reason\r\nX-Raw: 1\r\nConnection: close');
    assert.equal(r.rest.toString() || r.body.toString(), 'raw body\n');
    // A script that says so itself is left exactly as it wrote.
    const own = await rawRequest(port, 'GET /cgi-bin/nph-own.sh HTTP/1.1\nHost: x\n\n');
    assert.equal(own.rawHead, 'HTTP/1.0 200 OK\r\nconnection: close\r\ncontent-length: 3');
    assert.equal(own.body.toString(), 'own');
  });

  test("stderr lines go to the log, prefixed with the script's name", async () => {
    const log = captureLog();
    try {
      const r = await get(port, '/cgi-bin/stderr.sh');
      assert.equal(r.body.toString(), 'ok\n');
      await eventually(() => log.text(), /stderr\.sh: first line\n/);
      await eventually(() => log.text(), /stderr\.sh: second\n/);
      await eventually(() => log.text(), /stderr\.sh: third\n/);
    } finally {
      log.restore();
    }
  });
});

describe('a body the script finished before its response started', () => {
  test('goes out in one write with its Content-Length; a body still coming goes chunked', async () => {
    // The response writer serving two bodies: one handed over whole, one that ends later.
    const head = new CgiHeadParser().push(Buffer.from('Content-Type: text/plain\n\n'))!.head;
    const front = createHttpFront({
      routes: [
        {
          prefix: '/whole',
          handle(request) {
            const whole = {
              get body(): Readable {
                throw new Error('the stream is not needed for a body handed over whole');
              },
              takeWhole: () => Buffer.from('0123456789'),
            };
            sendResponse(request, head, whole, { who: 'test', target: '/whole' });
          },
        },
        {
          prefix: '/streamed',
          handle(request) {
            const b = new Readable({ read() {} });
            b.push(Buffer.from('01234'));
            sendResponse(request, head, { body: b, takeWhole: () => undefined }, { who: 'test', target: '/streamed' });
            setTimeout(() => {
              b.push(Buffer.from('56789'));
              b.push(null);
            }, 20);
          },
        },
      ],
    });
    const { port } = await front.listen(0, '127.0.0.1');
    try {
      const whole = await rawRequest(port, 'GET /whole HTTP/1.1\nHost: x\nConnection: close\n\n');
      assert.equal(whole.body.toString(), '0123456789');
      assert.equal(whole.headers['content-length'], '10');
      assert.equal(whole.headers['transfer-encoding'], undefined);
      const streamed = await rawRequest(port, 'GET /streamed HTTP/1.1\nHost: x\nConnection: close\n\n');
      assert.equal(streamed.body.toString(), '0123456789');
      assert.equal(streamed.headers['transfer-encoding'], 'chunked');
      assert.ok(streamed.complete);
    } finally {
      await front.stop(1000);
    }
  });
});
