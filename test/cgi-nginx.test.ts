// The CGI host behind a real nginx (proxy_pass, keep-alive upstream): request headers reach the script and the script's headers reach the client through a real proxy.
import assert from 'node:assert/strict';
import net from 'node:net';
import { after, before, describe, test, type TestContext } from 'node:test';
import { findPeer, requirePeer, startNginx, type NginxServer } from '../src/peers/index.ts';
import { ENV_SCRIPT, envOf, get, rawRequest, startCgiServer, type CgiServer } from './cgi-fixture.ts';

const sh = (body: string) => `#!/bin/sh\n${body}\n`;

const scripts = {
  'env.pl': ENV_SCRIPT,
  'headers.sh': sh(`printf 'Status: 418 Short And Stout\\r\\nContent-Type: text/plain; charset=utf-8\\r\\nSet-Cookie: a=1; Path=/\\r\\nSet-Cookie: b=2\\r\\nX-Custom: kept\\r\\nCache-Control: no-store\\r\\n\\r\\nteapot\\n'`),
  'redirect.sh': sh(`printf 'Location: https://example.com/next\\n\\n'`),
  'local.sh': sh(`printf 'Location: /cgi-bin/env.pl?via=local\\n\\n'`),
  'stream.sh': sh(`printf 'Content-Type: text/plain\\n\\nfirst\\n'; sleep 0.6; printf 'second\\n'`),
  'count.pl': `#!/usr/bin/perl
binmode STDIN; my $n = 0; my $left = $ENV{CONTENT_LENGTH} || 0;
while ($left > 0) { my $got = read(STDIN, my $buf, 65536); last unless $got; $n += $got; $left -= $got; }
print "Content-Type: text/plain\\n\\nbytes=$n length=$ENV{CONTENT_LENGTH}\\n";
`,
  'nph-raw.sh': sh(`printf 'HTTP/1.1 203 Via NPH\\r\\nContent-Type: text/plain\\r\\nContent-Length: 4\\r\\n\\r\\nnph\\n'`),
};

describe('behind nginx (proxy_pass)', () => {
  let server: CgiServer;
  let nginx: NginxServer | undefined;
  before(async () => {
    server = await startCgiServer(scripts);
    // Skipped (or, under CI=true, failed) in the test itself when nginx is missing.
    if (!findPeer('nginx')) return;
    nginx = await startNginx({
      http: `
upstream cgi_runner {
  server 127.0.0.1:${server.port};
  keepalive 8;
}
server {
  listen 127.0.0.1:{{port}};
  location / {
    proxy_pass http://cgi_runner;
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_set_header Host $http_host;
    proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
    proxy_set_header X-Forwarded-Proto $scheme;
    proxy_buffering off;
  }
}`,
    });
  });
  after(async () => {
    await nginx?.stop();
    await server?.close();
  });

  const port = (t: TestContext): number | undefined => {
    if (!requirePeer(t, 'nginx') || !nginx) return undefined;
    return nginx.port;
  };

  test('request headers, the raw query and PATH_INFO arrive through the proxy', async (t) => {
    const p = port(t);
    if (!p) return;
    const env = envOf(
      await rawRequest(
        p,
        `GET /cgi-bin/env.pl/a%20b/c?x=%20y&z HTTP/1.1\nHost: front.example:8443\nCookie: a=1\nCookie: b=2\nX-Custom: one\nX-Custom: two\nProxy: http://evil\nX_Custom: spoofed\nUser-Agent: test-agent\nConnection: close\n\n`,
      ),
    );
    assert.equal(env.HTTP_HOST, 'front.example:8443');
    assert.equal(env.SERVER_NAME, 'front.example');
    assert.equal(env.SERVER_PORT, String(server.port));
    assert.equal(env.HTTP_X_FORWARDED_FOR, '127.0.0.1');
    assert.equal(env.HTTP_X_FORWARDED_PROTO, 'http');
    assert.equal(env.HTTP_USER_AGENT, 'test-agent');
    assert.equal(env.HTTP_COOKIE, 'a=1; b=2');
    assert.equal(env.HTTP_X_CUSTOM, 'one, two');
    assert.equal(env.HTTP_PROXY, undefined);
    assert.equal(env.QUERY_STRING, 'x=%20y&z');
    assert.equal(env.PATH_INFO, '/a b/c');
    assert.equal(env.REQUEST_URI, '/cgi-bin/env.pl/a%20b/c?x=%20y&z');
    assert.equal(env.REMOTE_ADDR, '127.0.0.1');
    assert.equal(env.HTTP_CONNECTION, undefined, 'nginx sent Connection: "" (upstream keep-alive)');
  });

  test("the script's status, reason and headers reach the client", async (t) => {
    const p = port(t);
    if (!p) return;
    const r = await get(p, '/cgi-bin/headers.sh');
    assert.equal(r.status, 418);
    assert.equal(r.reason, 'Short And Stout');
    assert.equal(r.headers['content-type'], 'text/plain; charset=utf-8');
    assert.equal(r.headers['x-custom'], 'kept');
    assert.equal(r.headers['cache-control'], 'no-store');
    assert.match(r.rawHead, /\r\nSet-Cookie: a=1; Path=\/\r\n/);
    assert.match(r.rawHead, /\r\nSet-Cookie: b=2\r\n/);
    assert.equal(r.body.toString(), 'teapot\n');
  });

  test('client and local redirects', async (t) => {
    const p = port(t);
    if (!p) return;
    const r = await get(p, '/cgi-bin/redirect.sh');
    assert.equal(r.status, 302);
    assert.equal(r.headers.location, 'https://example.com/next');
    const local = envOf(await get(p, '/cgi-bin/local.sh'));
    assert.equal(local.QUERY_STRING, 'via=local');
    assert.equal(local.REDIRECT_URL, '/cgi-bin/local.sh');
  });

  test('a chunked upload arrives de-chunked with its length', async (t) => {
    const p = port(t);
    if (!p) return;
    const body = Buffer.alloc(300_000, 7);
    const chunks = `${(100_000).toString(16)}\r\n${body.subarray(0, 100_000).toString('latin1')}\r\n${(200_000).toString(16)}\r\n${body.subarray(100_000).toString('latin1')}\r\n0\r\n\r\n`;
    const r = await rawRequest(p, `POST /cgi-bin/count.pl HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n${chunks}`, { exact: true });
    assert.equal(r.body.toString(), 'bytes=300000 length=300000\n');
  });

  test('HEAD, nph- and streaming through the proxy', async (t) => {
    const p = port(t);
    if (!p) return;
    const head = await rawRequest(p, 'HEAD /cgi-bin/headers.sh HTTP/1.1\nHost: x\nConnection: close\n\n');
    assert.equal(head.status, 418);
    assert.equal(head.rest.length, 0, 'no body bytes after the head');
    const nph = await get(p, '/cgi-bin/nph-raw.sh');
    assert.equal(nph.status, 203);
    assert.equal(nph.body.toString(), 'nph\n');
    const started = performance.now();
    const firstAt = await new Promise<number>((resolve, reject) => {
      const socket = net.connect(p, '127.0.0.1');
      let first = 0;
      let text = '';
      socket.on('data', (d) => {
        text += d.toString();
        if (!first && text.includes('first')) first = performance.now() - started;
      });
      socket.on('close', () => (text.includes('second') ? resolve(first) : reject(new Error(text))));
      socket.on('error', reject);
      socket.write('GET /cgi-bin/stream.sh HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
    });
    assert.ok(firstAt < 500, `first bytes after ${firstAt.toFixed(0)} ms`);
  });

  test('many requests over nginx keep-alive upstream connections stay correctly framed', async (t) => {
    const p = port(t);
    if (!p) return;
    for (let round = 0; round < 3; round++) {
      const results = await Promise.all(Array.from({ length: 12 }, (_, i) => get(p, `/cgi-bin/env.pl?r${round}n${i}`)));
      results.forEach((r, i) => assert.equal(envOf(r).QUERY_STRING, `r${round}n${i}`));
    }
    assert.deepEqual(nginx!.errors(), []);
  });
});
