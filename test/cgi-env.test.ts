// The environment a CGI script gets (RFC 3875 §4.1), as a table of requests and expected variables in the style of Go's net/http/cgi host tests, through a real server and a real script.
import assert from 'node:assert/strict';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { ENV_SCRIPT, envOf, get, rawRequest, startCgiServer, type CgiServer } from './cgi-fixture.ts';

// Set in the runner's own environment: no script may see it.
process.env.CGI_RUNNER_TEST_SECRET = 'must-not-leak';

/** A value, a matcher, or ABSENT (the variable must not be set). */
const ABSENT = Symbol('absent');
type Expected = string | RegExp | typeof ABSENT | ((ctx: { port: number; dir: string }) => string);

interface Case {
  name: string;
  /** The request line's target, or a whole raw request (then `raw` is true). */
  request: string;
  raw?: boolean;
  headers?: string[];
  method?: string;
  server?: 'default' | 'passAuth';
  env: Record<string, Expected>;
}

const cases: Case[] = [
  {
    name: 'basic GET with a query',
    request: '/cgi-bin/env.pl?foo=bar&a=b',
    headers: ['X-Ignore: me'],
    env: {
      GATEWAY_INTERFACE: 'CGI/1.1',
      REQUEST_METHOD: 'GET',
      SCRIPT_NAME: '/cgi-bin/env.pl',
      SCRIPT_FILENAME: ({ dir }) => path.join(dir, 'env.pl'),
      QUERY_STRING: 'foo=bar&a=b',
      REQUEST_URI: '/cgi-bin/env.pl?foo=bar&a=b',
      PATH_INFO: ABSENT,
      PATH_TRANSLATED: ABSENT,
      SERVER_NAME: '127.0.0.1',
      SERVER_PORT: ({ port }) => String(port),
      SERVER_PROTOCOL: 'HTTP/1.1',
      SERVER_SOFTWARE: /^cgi-runner\/\d/,
      SERVER_ADDR: '127.0.0.1',
      REMOTE_ADDR: '127.0.0.1',
      REMOTE_PORT: /^\d+$/,
      REQUEST_SCHEME: 'http',
      HTTPS: ABSENT,
      DOCUMENT_ROOT: ({ dir }) => path.dirname(dir),
      CONTENT_LENGTH: ABSENT,
      CONTENT_TYPE: ABSENT,
      HTTP_HOST: ({ port }) => `127.0.0.1:${port}`,
      HTTP_X_IGNORE: 'me',
      AUTH_TYPE: ABSENT,
      REMOTE_USER: ABSENT,
      '@CWD': ({ dir }) => dir,
      '@ARGV': '',
    },
  },
  {
    name: 'PATH_INFO is decoded, encoded slashes included; REQUEST_URI stays raw',
    request: '/cgi-bin/env.pl/a%20b/c%2Fd/caf%C3%A9?x=%20y',
    env: {
      SCRIPT_NAME: '/cgi-bin/env.pl',
      PATH_INFO: '/a b/c/d/café',
      PATH_TRANSLATED: ({ dir }) => path.dirname(dir) + '/a b/c/d/café',
      QUERY_STRING: 'x=%20y',
      REQUEST_URI: '/cgi-bin/env.pl/a%20b/c%2Fd/caf%C3%A9?x=%20y',
    },
  },
  {
    name: 'PATH_INFO keeps a trailing slash; dot segments are resolved first',
    request: '/cgi-bin/sub/../env.pl/x/./y/../z/',
    env: { SCRIPT_NAME: '/cgi-bin/env.pl', PATH_INFO: '/x/z/' },
  },
  {
    name: 'a script in a subdirectory',
    request: '/cgi-bin/sub/env.pl/more',
    env: { SCRIPT_NAME: '/cgi-bin/sub/env.pl', PATH_INFO: '/more', SCRIPT_FILENAME: ({ dir }) => path.join(dir, 'sub/env.pl'), '@CWD': ({ dir }) => path.join(dir, 'sub') },
  },
  {
    name: 'the query is passed raw: escapes, "+" and "=" untouched',
    request: '/cgi-bin/env.pl?a=%20b+c&d=%3D&e',
    env: { QUERY_STRING: 'a=%20b+c&d=%3D&e' },
  },
  { name: 'no query gives an empty QUERY_STRING', request: '/cgi-bin/env.pl', env: { QUERY_STRING: '' } },
  { name: 'a bare "?" gives an empty QUERY_STRING', request: '/cgi-bin/env.pl?', env: { QUERY_STRING: '', REQUEST_URI: '/cgi-bin/env.pl?' } },
  {
    name: 'SERVER_NAME is the Host without its port; SERVER_PORT the port of the connection',
    request: '/cgi-bin/env.pl',
    headers: ['Host: example.com:8080'],
    env: { SERVER_NAME: 'example.com', SERVER_PORT: ({ port }) => String(port), HTTP_HOST: 'example.com:8080' },
  },
  { name: 'an IPv6 Host keeps its brackets', request: '/cgi-bin/env.pl', headers: ['Host: [::1]:9'], env: { SERVER_NAME: '[::1]' } },
  {
    name: 'HTTP/1.0 without Host: SERVER_NAME is the address',
    raw: true,
    request: 'GET /cgi-bin/env.pl HTTP/1.0\n\n',
    env: { SERVER_NAME: '127.0.0.1', SERVER_PROTOCOL: 'HTTP/1.0', HTTP_HOST: ABSENT },
  },
  {
    name: 'repeated headers are joined with ", ", Cookie with "; "',
    request: '/cgi-bin/env.pl',
    headers: ['Cookie: nom=NOM', 'Cookie: yum=YUM', 'X-Foo: val1', 'X-Foo: val2', 'Accept-Language: en'],
    env: { HTTP_COOKIE: 'nom=NOM; yum=YUM', HTTP_X_FOO: 'val1, val2', HTTP_ACCEPT_LANGUAGE: 'en' },
  },
  {
    name: 'Proxy never becomes HTTP_PROXY (httpoxy)',
    request: '/cgi-bin/env.pl',
    headers: ['X-Foo: bar', 'Proxy: http://evil.example:3128'],
    env: { HTTP_X_FOO: 'bar', HTTP_PROXY: ABSENT },
  },
  {
    name: 'a header with "_" cannot pose as its "-" spelling',
    request: '/cgi-bin/env.pl',
    headers: ['X_Forwarded_For: 6.6.6.6', 'X-Forwarded-For: 1.2.3.4', 'Remote_Addr: 6.6.6.6'],
    env: { HTTP_X_FORWARDED_FOR: '1.2.3.4', REMOTE_ADDR: '127.0.0.1', HTTP_REMOTE_ADDR: ABSENT },
  },
  {
    name: 'Authorization is not passed by default',
    request: '/cgi-bin/env.pl',
    headers: ['Authorization: Basic dXNlcjpwYXNz'],
    env: { HTTP_AUTHORIZATION: ABSENT, AUTH_TYPE: ABSENT, REMOTE_USER: ABSENT },
  },
  {
    name: 'Authorization is passed with --pass-auth',
    server: 'passAuth',
    request: '/cgi-bin/env.pl',
    headers: ['Authorization: Basic dXNlcjpwYXNz'],
    env: { HTTP_AUTHORIZATION: 'Basic dXNlcjpwYXNz', AUTH_TYPE: 'Basic', REMOTE_USER: ABSENT },
  },
  {
    name: 'a POST body gives CONTENT_LENGTH and CONTENT_TYPE, not HTTP_ copies',
    raw: true,
    request: 'POST /cgi-bin/env.pl HTTP/1.1\nHost: x\nContent-Type: application/x-www-form-urlencoded\nContent-Length: 15\nConnection: close\n\npostfoo=postbar',
    env: {
      REQUEST_METHOD: 'POST',
      CONTENT_LENGTH: '15',
      CONTENT_TYPE: 'application/x-www-form-urlencoded',
      HTTP_CONTENT_LENGTH: ABSENT,
      HTTP_CONTENT_TYPE: ABSENT,
    },
  },
  {
    name: 'a chunked body is de-chunked and CONTENT_LENGTH set to its length',
    raw: true,
    request: 'POST /cgi-bin/env.pl HTTP/1.1\nHost: x\nContent-Type: text/plain\nTransfer-Encoding: chunked\nConnection: close\n\n5\nhello\n6\n world\n0\n\n',
    env: { CONTENT_LENGTH: '11', CONTENT_TYPE: 'text/plain', HTTP_TRANSFER_ENCODING: ABSENT },
  },
  {
    name: 'Content-Type without a body is not passed',
    request: '/cgi-bin/env.pl',
    headers: ['Content-Type: text/plain'],
    env: { CONTENT_TYPE: ABSENT, CONTENT_LENGTH: ABSENT, HTTP_CONTENT_TYPE: ABSENT },
  },
  { name: 'HEAD', method: 'HEAD', request: '/cgi-bin/env.pl', env: {} },
  {
    name: 'a query without "=" is not argv by default (CVE-2012-1823)',
    request: '/cgi-bin/env.pl?-s+-d',
    env: { '@ARGV': '', QUERY_STRING: '-s+-d' },
  },
  {
    name: 'a query without "=" becomes argv with --isindex-args (RFC 3875 §4.4)',
    server: 'passAuth',
    request: '/cgi-bin/env.pl?foo+b%20r',
    env: { '@ARGV': 'foo\x01b r' },
  },
  { name: 'with --isindex-args, a query with "=" is not argv', server: 'passAuth', request: '/cgi-bin/env.pl?a=b+c', env: { '@ARGV': '' } },
];

// Everything a script may see: PATH and the CGI variables, never the runner's own environment.
const allowed = new Set([
  'PATH', 'GATEWAY_INTERFACE', 'SERVER_SOFTWARE', 'SERVER_PROTOCOL', 'SERVER_NAME', 'SERVER_PORT', 'SERVER_ADDR',
  'REQUEST_METHOD', 'REQUEST_URI', 'REQUEST_SCHEME', 'SCRIPT_NAME', 'SCRIPT_FILENAME', 'PATH_INFO', 'PATH_TRANSLATED',
  'QUERY_STRING', 'REMOTE_ADDR', 'REMOTE_PORT', 'DOCUMENT_ROOT', 'CONTENT_LENGTH', 'CONTENT_TYPE', 'AUTH_TYPE',
  'REMOTE_USER', 'HTTPS', 'REDIRECT_STATUS', '@ARGV', '@CWD',
]);

describe('CGI environment', () => {
  let plain: CgiServer;
  let passAuth: CgiServer;
  const scripts = { 'env.pl': ENV_SCRIPT, 'sub/env.pl': ENV_SCRIPT };
  before(async () => {
    [plain, passAuth] = await Promise.all([
      startCgiServer(scripts),
      startCgiServer(scripts, { passAuth: true, isindexArgs: true }),
    ]);
  });
  after(async () => {
    await Promise.all([plain?.close(), passAuth?.close()]);
  });

  for (const c of cases) {
    test(c.name, async () => {
      const server = c.server === 'passAuth' ? passAuth : plain;
      const { port, dir } = server;
      const hasHost = c.headers?.some((h) => /^host:/i.test(h)) ?? false;
      const request = c.raw
        ? c.request
        : `${c.method ?? 'GET'} ${c.request} HTTP/1.1\n${hasHost ? '' : `Host: 127.0.0.1:${port}\n`}${(c.headers ?? []).map((h) => h + '\n').join('')}Connection: close\n\n`;
      const response = await rawRequest(port, request);
      if (c.method === 'HEAD') {
        assert.equal(response.status, 200);
        assert.equal(response.rest.length, 0, 'no body bytes after the head');
        return;
      }
      const env = envOf(response);
      for (const [name, want] of Object.entries(c.env)) {
        const got = env[name];
        if (want === ABSENT) assert.equal(got, undefined, `${name} must not be set, got ${JSON.stringify(got)}`);
        else if (want instanceof RegExp) assert.match(got ?? '', want, name);
        else assert.equal(got, typeof want === 'function' ? want({ port, dir }) : want, name);
      }
      for (const name of Object.keys(env)) {
        assert.ok(allowed.has(name) || name.startsWith('HTTP_'), `unexpected variable ${name}=${env[name]}`);
      }
      assert.equal(env.CGI_RUNNER_TEST_SECRET, undefined);
      assert.equal(env.PATH, process.env.PATH);
    });
  }

  test('a NUL byte in PATH_INFO is a 400, not a crash', async () => {
    const response = await get(plain.port, '/cgi-bin/env.pl/a%00b');
    assert.equal(response.status, 400);
    assert.equal((await get(plain.port, '/cgi-bin/env.pl')).status, 200, 'the server still serves');
  });

  test('a NUL byte in a header value is a 400, not a crash', async () => {
    const response = await rawRequest(plain.port, 'GET /cgi-bin/env.pl HTTP/1.1\r\nHost: x\r\nX-Bad: a\0b\r\nConnection: close\r\n\r\n', { exact: true });
    assert.equal(response.status, 400);
    assert.equal((await get(plain.port, '/cgi-bin/env.pl')).status, 200, 'the server still serves');
  });
});
