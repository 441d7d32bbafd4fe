// Security checks against the real processes: path traversal through every encoding, httpoxy, underscore-header spoofing,
// environment leakage, NUL bytes, response splitting, and request smuggling through Content-Length and Transfer-Encoding tricks.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { freePort, startProcess, stop as stopProcess, waitForPort, waitUntilReady, type ManagedProcess } from '../src/peers/index.ts';
import { cliArgs, repoRoot, startCgiStack, type SoakStack } from '../src/soak/stack.ts';
import { WireClient, parseCgiResponse } from './fastcgi-wire.ts';

// Secrets in the runner's own environment: no script may see them.
const runnerSecrets = { RUNNER_SECRET: 'the-runner-secret', AWS_SECRET_ACCESS_KEY: 'aws-secret', DATABASE_URL: 'postgres://user:pw@db/x' };

const ENV_SCRIPT = `#!/usr/bin/perl
binmode STDOUT;
print "Content-Type: text/plain\\r\\n\\r\\n";
for my $k (sort keys %ENV) { my $v = $ENV{$k}; $v =~ s/\\n/\\\\n/g; print "$k=$v\\n"; }
`;

function envOf(body: string): Record<string, string> {
  const env: Record<string, string> = {};
  for (const line of body.split('\n')) {
    const eq = line.indexOf('=');
    if (eq > 0) env[line.slice(0, eq)] = line.slice(eq + 1);
  }
  return env;
}

interface RawAnswer {
  text: string;
  /** The status of each response on the connection, in order. */
  statuses: number[];
}

/** Sends bytes as they are and reads until the server closes (or `waitMs` after the last byte, then closes). */
function raw(port: number, request: string | Buffer, waitMs = 1500): Promise<RawAnswer> {
  return new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1');
    let text = '';
    let timer: NodeJS.Timeout | undefined;
    const done = () => {
      clearTimeout(timer);
      socket.destroy();
      resolve({ text, statuses: [...text.matchAll(/HTTP\/1\.[01] (\d{3})/g)].map((m) => Number(m[1])) });
    };
    const arm = () => {
      clearTimeout(timer);
      timer = setTimeout(done, waitMs);
    };
    socket.on('data', (chunk) => {
      text += chunk.toString('latin1');
      arm();
    });
    socket.on('close', done);
    socket.on('error', () => {});
    socket.write(typeof request === 'string' ? Buffer.from(request, 'latin1') : request);
    arm();
  });
}

describe('serve (CGI)', () => {
  let stack: SoakStack;
  let port: number;
  let logFile: string;
  let escapedMarker: string;

  before(async () => {
    stack = await startCgiStack({ maxScripts: 4, env: runnerSecrets, scripts: {} });
    port = Number(new URL(stack.baseUrl).port);
    const root = stack.dir;
    const cgiBin = path.join(root, 'cgi-bin');
    logFile = path.join(root, 'requests.log');
    escapedMarker = path.join(root, 'ESCAPED');
    const write = (file: string, body: string) => fs.writeFileSync(file, body, { mode: 0o755 });
    write(path.join(cgiBin, 'env'), ENV_SCRIPT);
    write(path.join(cgiBin, 'hello'), '#!/bin/sh\nprintf "Content-Type: text/plain\\r\\n\\r\\nhello\\n"\n');
    // Records each request it serves, with its body, so a smuggled request would show.
    write(
      path.join(cgiBin, 'log'),
      `#!/usr/bin/perl\nbinmode STDIN;\nmy $n = $ENV{CONTENT_LENGTH} || 0; my $body = ''; read(STDIN, $body, $n) if $n;\nopen(my $f, '>>', '${logFile}'); print $f "$ENV{REQUEST_METHOD} $ENV{REQUEST_URI} [$body]\\n"; close $f;\nprint "Content-Type: text/plain\\r\\n\\r\\nlogged\\n";\n`,
    );
    // A bare CR inside a value: a client that treats CR as a line end would see a second header.
    write(path.join(cgiBin, 'split'), '#!/usr/bin/perl\nprint "Content-Type: text/plain\\r\\nX-A: a\\rSet-Cookie: evil=1\\r\\n\\r\\nbody\\n";\n');
    write(path.join(cgiBin, 'split-lf'), '#!/usr/bin/perl\nprint "Content-Type: text/plain\\nX-A: a\\rSet-Cookie: evil=1\\n\\nbody\\n";\n');
    write(path.join(cgiBin, 'split-nul'), '#!/usr/bin/perl\nprint "Content-Type: text/plain\\nX-A: a\\0b\\n\\nbody\\n";\n');
    // Outside the script directory: running it would leave a marker.
    for (const file of [path.join(root, 'outside'), path.join(root, 'outside.cgi')]) write(file, `#!/bin/sh\ntouch ${escapedMarker}\nprintf "Content-Type: text/plain\\r\\n\\r\\nESCAPED\\n"\n`);
  });
  after(() => stack?.stop());

  describe('path traversal: no encoding reaches a file outside --cgi-dir', () => {
    const targets = [
      '/cgi-bin/../outside',
      '/cgi-bin/./../outside',
      '/cgi-bin//../outside',
      '/cgi-bin/%2e%2e/outside',
      '/cgi-bin/%2E%2E/outside',
      '/cgi-bin/.%2e/outside',
      '/cgi-bin/%2e./outside',
      '/cgi-bin/..%2foutside',
      '/cgi-bin/..%2Foutside',
      '/cgi-bin/%2e%2e%2foutside',
      '/cgi-bin/%2e%2e%2Foutside',
      '/cgi-bin/..%5coutside',
      '/cgi-bin/..%5Coutside',
      '/cgi-bin/..\\outside',
      '/cgi-bin/%252e%252e/outside',
      '/cgi-bin/..%252foutside',
      '/cgi-bin/%25%32%65%25%32%65/outside',
      '/cgi-bin/%c0%ae%c0%ae/outside',
      '/cgi-bin/%c0%ae%c0%ae%c0%afoutside',
      '/cgi-bin/%e0%80%ae%e0%80%ae/outside',
      '/cgi-bin/%c1%9c../outside',
      '/cgi-bin/%u002e%u002e/outside',
      '/cgi-bin/%ef%bc%8e%ef%bc%8e/outside',
      '/cgi-bin/..;/outside',
      '/cgi-bin/.../outside',
      '/cgi-bin/hello/../../outside',
      '/cgi-bin/hello/%2e%2e/%2e%2e/outside',
      '/cgi-bin/%00/../outside',
      '/cgi-bin/..%00/outside',
      '/cgi-bin/../outside%00.cgi',
      '/cgi-bin/%2e%2e/outside.cgi',
      '/cgi-bin/../cgi-bin/../outside',
      '/cgi-bin/....//outside',
      '/cgi-bin/..%c0%afoutside',
      '/cgi-bin/..%e0%80%afoutside',
      '/cgi-bin/%2e%2e%5c%2e%2e%5coutside',
      `/cgi-bin/${'../'.repeat(20)}etc/passwd`,
      '/cgi-bin/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd',
    ];
    for (const target of targets) {
      test(target, async () => {
        const answer = await raw(port, `GET ${target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`);
        assert.equal(answer.statuses.length, 1, answer.text.slice(0, 200));
        const status = answer.statuses[0]!;
        assert.ok(status === 400 || status === 403 || status === 404, `status ${status}`);
        assert.doesNotMatch(answer.text, /ESCAPED|root:x:0:0/);
        assert.equal(fs.existsSync(escapedMarker), false, 'the outside script ran');
      });
    }

    test('absolute-form request targets are held to the same rules', async () => {
      for (const target of ['http://x/cgi-bin/../outside', 'http://x/cgi-bin/%2e%2e/outside']) {
        const answer = await raw(port, `GET ${target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`);
        assert.ok(answer.statuses[0]! >= 400, `${target}: ${answer.statuses[0]}`);
        assert.doesNotMatch(answer.text, /ESCAPED/);
      }
      assert.equal(fs.existsSync(escapedMarker), false);
    });

    test('a traversal in PATH_INFO runs the script inside, never anything outside', async () => {
      const answer = await raw(port, 'GET /cgi-bin/env/../../outside HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
      assert.doesNotMatch(answer.text, /ESCAPED/);
      assert.equal(fs.existsSync(escapedMarker), false);
    });
  });

  test('httpoxy: a Proxy header never becomes HTTP_PROXY', async () => {
    const answer = await raw(port, 'GET /cgi-bin/env HTTP/1.1\r\nHost: x\r\nProxy: http://evil.test:3128\r\nConnection: close\r\n\r\n');
    assert.equal(answer.statuses[0], 200);
    const env = envOf(answer.text.slice(answer.text.indexOf('\r\n\r\n') + 4));
    assert.equal(env.HTTP_PROXY, undefined);
    assert.doesNotMatch(answer.text, /evil\.test/);
  });

  test('underscore-header spoofing: X_Forwarded_For cannot pose as X-Forwarded-For', async () => {
    const answer = await raw(
      port,
      'GET /cgi-bin/env HTTP/1.1\r\nHost: x\r\nX_Forwarded_For: 6.6.6.6\r\nX-Forwarded-For: 10.0.0.1\r\nRemote_User: admin\r\nContent_Type: evil/type\r\nConnection: close\r\n\r\n',
    );
    const env = envOf(answer.text.slice(answer.text.indexOf('\r\n\r\n') + 4));
    assert.equal(env.HTTP_X_FORWARDED_FOR, '10.0.0.1');
    assert.equal(env.REMOTE_USER, undefined);
    assert.equal(env.HTTP_REMOTE_USER, undefined);
    assert.equal(env.CONTENT_TYPE, undefined);
    assert.doesNotMatch(answer.text, /6\.6\.6\.6|evil\/type/);
  });

  test("environment leakage: scripts see PATH and the CGI variables, nothing of the runner's environment", async () => {
    const answer = await raw(port, 'GET /cgi-bin/env HTTP/1.1\r\nHost: x\r\nAuthorization: Basic dXNlcjpwYXNz\r\nConnection: close\r\n\r\n');
    const env = envOf(answer.text.slice(answer.text.indexOf('\r\n\r\n') + 4));
    for (const [name, value] of Object.entries(runnerSecrets)) {
      assert.equal(env[name], undefined, name);
      assert.ok(!answer.text.includes(value), `${name}'s value leaked`);
    }
    for (const name of ['HOME', 'NODE_OPTIONS', 'CI', 'TMPDIR', 'LD_PRELOAD']) assert.equal(env[name], undefined, name);
    assert.equal(env.HTTP_AUTHORIZATION, undefined, 'Authorization is passed only with --pass-auth');
    const allowed = /^(PATH|GATEWAY_INTERFACE|REDIRECT_STATUS|SERVER_\w+|REQUEST_\w+|SCRIPT_\w+|QUERY_STRING|REMOTE_\w+|DOCUMENT_ROOT|CONTENT_\w+|PATH_INFO|PATH_TRANSLATED|HTTPS|HTTP_\w+|AUTH_TYPE)$/;
    for (const name of Object.keys(env)) assert.match(name, allowed);
  });

  test('a NUL byte in a header value, the path or the request line is a 400; no script runs', async () => {
    const before = fs.existsSync(logFile) ? fs.readFileSync(logFile, 'utf8') : '';
    for (const request of [
      'GET /cgi-bin/log HTTP/1.1\r\nHost: x\r\nX-A: a\0b\r\nConnection: close\r\n\r\n',
      'GET /cgi-bin/log%00.txt HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n',
      'GET /cgi-bin/log/%00 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n',
      'GET /cgi-bin/log\0 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n',
      'GET /cgi-bin/log HTTP/1.1\r\nHost: x\r\nX-\0: a\r\nConnection: close\r\n\r\n',
    ]) {
      const answer = await raw(port, request);
      assert.equal(answer.statuses[0], 400, JSON.stringify(request));
    }
    const now = fs.existsSync(logFile) ? fs.readFileSync(logFile, 'utf8') : '';
    assert.equal(now, before);
  });

  test("CR or LF in a script's header value: a 502, never a split response", async () => {
    for (const script of ['split', 'split-lf', 'split-nul']) {
      const answer = await raw(port, `GET /cgi-bin/${script} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`);
      assert.deepEqual(answer.statuses, [502], `${script}: ${answer.text.slice(0, 200)}`);
      assert.doesNotMatch(answer.text, /evil=1|injected=1/i);
    }
  });

  describe('request smuggling: node:http rejects every ambiguous framing with a 400, and no hidden request runs', () => {
    const smuggled = 'GET /cgi-bin/log?smuggled HTTP/1.1\r\nHost: x\r\n\r\n';
    const chunked = '5\r\nhello\r\n0\r\n\r\n';
    const rejected: Array<[string, string, string]> = [
      ['two different Content-Lengths', 'Content-Length: 5\r\nContent-Length: 6\r\n', 'hello'],
      ['two equal Content-Lengths', 'Content-Length: 5\r\nContent-Length: 5\r\n', 'hello'],
      ['a Content-Length list', 'Content-Length: 5, 6\r\n', 'hello'],
      ['a Content-Length list of equal values', 'Content-Length: 5, 5\r\n', 'hello'],
      ['an oversized Content-Length (beyond 2^64)', 'Content-Length: 99999999999999999999999\r\n', 'hello'],
      ['a signed Content-Length', 'Content-Length: +5\r\n', 'hello'],
      ['a negative Content-Length', 'Content-Length: -5\r\n', 'hello'],
      ['a hexadecimal Content-Length', 'Content-Length: 0x5\r\n', 'hello'],
      ['a Content-Length with a space inside', 'Content-Length: 5 5\r\n', 'hello'],
      ['Transfer-Encoding chunked and Content-Length', 'Transfer-Encoding: chunked\r\nContent-Length: 5\r\n', chunked],
      ['Content-Length and Transfer-Encoding chunked', 'Content-Length: 50\r\nTransfer-Encoding: chunked\r\n', chunked],
      ['chunked not last (chunked, identity)', 'Transfer-Encoding: chunked, identity\r\n', chunked],
      ['an unknown coding (xchunked)', 'Transfer-Encoding: xchunked\r\n', chunked],
      ['an unsupported coding (gzip)', 'Transfer-Encoding: gzip\r\n', chunked],
      ['Transfer-Encoding twice', 'Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n', chunked],
      ['chunked then identity in two fields', 'Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n', chunked],
      ['a space before the colon', 'Transfer-Encoding : chunked\r\n', chunked],
      ['a vertical tab before the value', 'Transfer-Encoding:\x0bchunked\r\n', chunked],
      ['an obs-fold value', 'Transfer-Encoding:\r\n chunked\r\n', chunked],
      ['a bare LF after the field', 'Transfer-Encoding: chunked\n', chunked],
      ['a chunk size beyond 64 bits', 'Transfer-Encoding: chunked\r\n', 'ffffffffffffffffff5\r\nhello\r\n0\r\n\r\n'],
      ['a 0x chunk size', 'Transfer-Encoding: chunked\r\n', '0x5\r\nhello\r\n0\r\n\r\n'],
      ['a negative chunk size', 'Transfer-Encoding: chunked\r\n', '-5\r\nhello\r\n0\r\n\r\n'],
      ['a bare LF after the chunk size', 'Transfer-Encoding: chunked\r\n', '5\nhello\r\n0\r\n\r\n'],
      ['a bare LF after the chunk data', 'Transfer-Encoding: chunked\r\n', '5\r\nhello\n0\r\n\r\n'],
      ['more data than the chunk size', 'Transfer-Encoding: chunked\r\n', '3\r\nhello\r\n0\r\n\r\n'],
      ['a bare LF inside a chunk extension', 'Transfer-Encoding: chunked\r\n', '5;a\nb\r\nhello\r\n0\r\n\r\n'],
    ];
    for (const [name, headers, body] of rejected) {
      test(name, async () => {
        fs.rmSync(logFile, { force: true });
        const answer = await raw(port, `POST /cgi-bin/log?first HTTP/1.1\r\nHost: x\r\n${headers}\r\n${body}${smuggled}`);
        assert.equal(answer.statuses[0], 400, answer.text.slice(0, 200));
        assert.equal(answer.statuses.length, 1, 'only one response on the connection');
        await sleep(100);
        const log = fs.existsSync(logFile) ? fs.readFileSync(logFile, 'utf8') : '';
        assert.doesNotMatch(log, /smuggled/);
      });
    }

    // These are unambiguous: both ends read the body as "hello" and the next request as the next request.
    const accepted: Array<[string, string, string]> = [
      ['identity, chunked (chunked last)', 'Transfer-Encoding: identity, chunked\r\n', chunked],
      ['CHUNKED in capitals', 'Transfer-Encoding: CHUNKED\r\n', chunked],
      ['a chunk extension', 'Transfer-Encoding: chunked\r\n', '5;name=value\r\nhello\r\n0\r\n\r\n'],
      ['a trailer field', 'Transfer-Encoding: chunked\r\n', '5\r\nhello\r\n0\r\nX-Trailer: y\r\n\r\n'],
    ];
    for (const [name, headers, body] of accepted) {
      test(`accepted and framed the same way: ${name}`, async () => {
        fs.rmSync(logFile, { force: true });
        const answer = await raw(port, `POST /cgi-bin/log?first HTTP/1.1\r\nHost: x\r\n${headers}\r\n${body}${smuggled}`);
        assert.deepEqual(answer.statuses, [200, 200]);
        // Node hands pipelined requests over as they are parsed, so the two scripts may run in either order.
        const log = fs.readFileSync(logFile, 'utf8').trim().split('\n').sort();
        assert.deepEqual(log, ['GET /cgi-bin/log?smuggled []', 'POST /cgi-bin/log?first [hello]']);
      });
    }
  });
});

describe('FastCGI: the responder and fcgi --cgi-dir', () => {
  const procs: ManagedProcess[] = [];
  let appPort: number;
  let wrapperPort: number;
  let cgiDir: string;

  before(async () => {
    cgiDir = fs.mkdtempSync(path.join(os.tmpdir(), 'security-cgi-'));
    fs.writeFileSync(path.join(cgiDir, 'env'), ENV_SCRIPT, { mode: 0o755 });
    fs.writeFileSync(path.join(cgiDir, 'split'), '#!/usr/bin/perl\nprint "Content-Type: text/plain\\nX-A: a\\rSet-Cookie: evil=1\\n\\nbody\\n";\n', { mode: 0o755 });
    const start = async (flags: string[]) => {
      const port = await freePort();
      const { command, args } = cliArgs('fcgi', ['--listen', `127.0.0.1:${port}`, '--no-access-log', ...flags]);
      const proc = await startProcess({ name: 'cgi-runner fcgi', command, args, cwd: repoRoot, env: { ...process.env, ...runnerSecrets } });
      procs.push(proc);
      await waitUntilReady(proc, (signal) => waitForPort(port, '127.0.0.1', 20_000, signal));
      return port;
    };
    [appPort, wrapperPort] = await Promise.all([start(['--app', path.join(repoRoot, 'test/fixtures/apps/security.ts')]), start(['--cgi-dir', cgiDir])]);
  });
  after(async () => {
    await Promise.all(procs.map((p) => stopProcess(p, 'SIGTERM', 5000)));
    if (cgiDir) fs.rmSync(cgiDir, { recursive: true, force: true });
  });

  const base = { REQUEST_METHOD: 'GET', SERVER_PROTOCOL: 'HTTP/1.1', HTTP_HOST: 'x', SERVER_NAME: 'x', SERVER_PORT: '80', REMOTE_ADDR: '127.0.0.1' };

  test('httpoxy: HTTP_PROXY from the web server is not a request header for the app', async () => {
    const client = await WireClient.connect(appPort);
    client.request(1, { ...base, REQUEST_URI: '/headers', HTTP_PROXY: 'http://evil.test:3128', HTTP_X_OK: 'yes' });
    const headers = JSON.parse(parseCgiResponse((await client.response(1)).stdout).body.toString()) as Record<string, string>;
    assert.equal(headers['x-ok'], 'yes');
    assert.equal(headers.proxy, undefined);
    client.close();
  });

  test('httpoxy and leakage with --cgi-dir: the script gets no HTTP_PROXY, no Authorization, nothing of the runner', async () => {
    const client = await WireClient.connect(wrapperPort);
    client.request(1, {
      ...base,
      REQUEST_URI: '/env',
      SCRIPT_NAME: '/env',
      SCRIPT_FILENAME: path.join(cgiDir, 'env'),
      HTTP_PROXY: 'http://evil.test:3128',
      HTTP_AUTHORIZATION: 'Basic dXNlcjpwYXNz',
    });
    const r = await client.response(1, 10_000);
    const body = parseCgiResponse(r.stdout).body.toString();
    const env = envOf(body);
    assert.equal(env.SCRIPT_NAME, '/env');
    assert.equal(env.HTTP_PROXY, undefined);
    assert.equal(env.HTTP_AUTHORIZATION, undefined);
    for (const [name, value] of Object.entries(runnerSecrets)) {
      assert.equal(env[name], undefined, name);
      assert.ok(!body.includes(value), `${name}'s value leaked`);
    }
    for (const name of ['HOME', 'NODE_OPTIONS', 'CGI_RUNNER_INHERITED_FD']) assert.equal(env[name], undefined, name);
    client.close();
  });

  test('--cgi-dir: a SCRIPT_FILENAME outside DIR, in any spelling, is refused', async () => {
    const client = await WireClient.connect(wrapperPort);
    const outside = ['/etc/passwd', `${cgiDir}/../package.json`, `${cgiDir}/%2e%2e/package.json`, `${cgiDir}/env/../../package.json`, `proxy:fcgi://x:9000${cgiDir}/../package.json`, `${cgiDir}\0/env`];
    let id = 1;
    for (const file of outside) {
      client.request(id, { ...base, REQUEST_URI: '/x', SCRIPT_NAME: '/x', SCRIPT_FILENAME: file });
      const r = await client.response(id, 10_000);
      const status = parseCgiResponse(r.stdout).status;
      assert.ok(status === 400 || status === 403 || status === 404, `${JSON.stringify(file)}: ${status}`);
      id++;
    }
    client.close();
  });

  test('--cgi-dir: a NUL byte in a param (FastCGI carries any byte) is a 400; the script does not run', async () => {
    const client = await WireClient.connect(wrapperPort);
    client.request(1, { ...base, REQUEST_URI: '/env', SCRIPT_NAME: '/env', SCRIPT_FILENAME: path.join(cgiDir, 'env'), HTTP_X_A: 'a\0b' });
    const r = await client.response(1, 10_000);
    const res = parseCgiResponse(r.stdout);
    assert.equal(res.status, 400);
    assert.doesNotMatch(res.body.toString(), /HTTP_X_A/);
    client.close();
  });

  test("response splitting: an app's header value with CR/LF is a 500, a script's is a 502; nothing injected", async () => {
    const app = await WireClient.connect(appPort);
    for (const [id, value] of [[1, 'a\r\nSet-Cookie: evil=1'], [2, 'a\nSet-Cookie: evil=1'], [3, 'a\rSet-Cookie: evil=1'], [4, 'a\0b']] as const) {
      app.request(id, { ...base, REQUEST_URI: `/inject?${encodeURIComponent(value)}`, QUERY_STRING: encodeURIComponent(value) });
      const r = await app.response(id);
      assert.equal(parseCgiResponse(r.stdout).status, 500, JSON.stringify(value));
      assert.doesNotMatch(r.stdout.toString('latin1'), /evil=1/i);
    }
    app.close();
    const wrapper = await WireClient.connect(wrapperPort);
    wrapper.request(1, { ...base, REQUEST_URI: '/split', SCRIPT_NAME: '/split', SCRIPT_FILENAME: path.join(cgiDir, 'split') });
    const r = await wrapper.response(1, 10_000);
    assert.equal(parseCgiResponse(r.stdout).status, 502);
    assert.doesNotMatch(r.stdout.toString('latin1'), /evil=1/i);
    wrapper.close();
  });
});
