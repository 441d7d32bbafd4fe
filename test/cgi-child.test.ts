// One app, both ways: the shipped cgi-bin/ comparison set served by `serve`, and the child adapter (src/cgi/child.ts) running Fetch handlers as CGI scripts.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { startServe, type RunningServer } from '../src/commands/serve.ts';
import { captureLog, get, rawRequest, startCgiServer, type CgiServer } from './cgi-fixture.ts';
import { eventually } from './fixtures/eventually.ts';

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
// Scripts in a temporary directory cannot find tsx from there, so their shebang names it exactly.
const tsxLoader = import.meta.resolve('tsx');
const src = (file: string) => pathToFileURL(path.join(repo, file)).href;

const adapterScript = (body: string) => `#!/usr/bin/env -S node --import ${tsxLoader}
import { runCgi } from '${src('src/cgi/child.ts')}';
${body}
`;

describe('the shipped cgi-bin/ set', () => {
  let server: RunningServer;
  before(async () => {
    server = await startServe({ port: 0, host: '127.0.0.1', cgiDir: path.join(repo, 'cgi-bin'), timeout: 30, maxBody: 1 << 20, maxScripts: 8 });
  });
  after(() => server?.stop(2000));

  for (const name of ['hello.sh', 'hello.mjs', 'hello.ts']) {
    test(`${name} answers exactly like fcgi/hello.ts`, async () => {
      const r = await get(server.port, `/cgi-bin/${name}`);
      assert.equal(r.status, 200);
      assert.equal(r.headers['content-type'], 'text/plain; charset=utf-8');
      assert.equal(r.body.toString(), 'hello\n');
    });
  }

  test('env.pl prints its environment', async () => {
    const r = await get(server.port, '/cgi-bin/env.pl/extra?q=1');
    assert.equal(r.status, 200);
    const text = r.body.toString();
    assert.match(text, /^GATEWAY_INTERFACE=CGI\/1\.1$/m);
    assert.match(text, /^PATH_INFO=\/extra$/m);
    assert.match(text, /^QUERY_STRING=q=1$/m);
    assert.match(text, new RegExp(`^cwd: ${path.join(repo, 'cgi-bin')}$`, 'm'));
  });

  test('every cgi-bin file is committed executable', () => {
    const listing = execFileSync('git', ['ls-files', '-s', 'cgi-bin'], { cwd: repo, encoding: 'utf8' }).trim().split('\n');
    assert.ok(listing.length >= 4, listing.join('\n'));
    for (const line of listing) assert.match(line, /^100755 /, line);
    for (const name of fs.readdirSync(path.join(repo, 'cgi-bin'))) {
      assert.ok(fs.statSync(path.join(repo, 'cgi-bin', name)).mode & 0o100, `${name} is executable on disk`);
    }
  });
});

describe('the CGI child adapter', () => {
  let server: CgiServer;
  before(async () => {
    server = await startCgiServer({
      // As in the repository: .ts files are ES modules (top-level await).
      'package.json': { body: '{ "type": "module" }\n', mode: 0o644 },
      'echo.ts': adapterScript(`import app from '${src('fcgi/echo.ts')}';\nawait runCgi(app);`),
      'stream.ts': adapterScript(`await runCgi({
  fetch() {
    let step = 0;
    const body = new ReadableStream({
      async pull(controller) {
        if (step++ === 0) return controller.enqueue(new TextEncoder().encode('first\\n'));
        await new Promise((r) => setTimeout(r, 700));
        controller.enqueue(new TextEncoder().encode('second\\n'));
        controller.close();
      },
    });
    return new Response(body, { status: 201, statusText: 'Made', headers: { 'content-type': 'text/plain', 'set-cookie': 'a=1' } });
  },
});`),
      'fail.ts': adapterScript(`await runCgi({ fetch() { throw new Error('the app broke'); } });`),
    });
  });
  after(() => server?.close());

  test('environment and stdin become the Request', async () => {
    const body = Buffer.alloc(100_000, 1);
    const r = await rawRequest(
      server.port,
      Buffer.concat([
        Buffer.from(`POST /cgi-bin/echo.ts/some/path?q=1 HTTP/1.1\r\nHost: app.example:8080\r\nContent-Type: application/octet-stream\r\nContent-Length: ${body.length}\r\nX-Test: yes\r\nConnection: close\r\n\r\n`),
        body,
      ]),
    );
    assert.equal(r.status, 200);
    const report = JSON.parse(r.body.toString());
    assert.equal(report.method, 'POST');
    assert.equal(report.url, 'http://app.example:8080/cgi-bin/echo.ts/some/path?q=1');
    assert.equal(report.headers['x-test'], 'yes');
    assert.equal(report.headers['content-type'], 'application/octet-stream');
    assert.equal(report.bodySize, body.length);
    assert.equal(report.role, 'responder');
  });

  test('a streamed Response reaches the client as it is produced, with its status and headers', async () => {
    const started = performance.now();
    const times: Array<[string, number]> = [];
    const text = await new Promise<string>((resolve, reject) => {
      const socket = net.connect(server.port, '127.0.0.1');
      let all = '';
      socket.on('data', (d) => {
        all += d.toString();
        times.push([all, performance.now() - started]);
      });
      socket.on('close', () => resolve(all));
      socket.on('error', reject);
      socket.write('GET /cgi-bin/stream.ts HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
    });
    assert.match(text, /^HTTP\/1\.1 201 Made\r\n/);
    assert.match(text, /\r\nset-cookie: a=1\r\n/i);
    const first = times.find(([all]) => all.includes('first'))![1];
    const second = times.find(([all]) => all.includes('second'))![1];
    assert.ok(second - first >= 500, `"second" came ${(second - first).toFixed(0)} ms after "first"`);
  });

  test('an app that throws gives a 500, and the error goes to the log', async () => {
    const log = captureLog();
    try {
      const r = await get(server.port, '/cgi-bin/fail.ts');
      assert.equal(r.status, 500);
      await eventually(() => log.text(), /fail\.ts: cgi: the app failed: Error: the app broke/);
    } finally {
      log.restore();
    }
  });

  test('run directly with REQUEST_METHOD=HEAD, the adapter writes the header block and no body', () => {
    const env = { PATH: process.env.PATH ?? '/usr/bin:/bin', GATEWAY_INTERFACE: 'CGI/1.1', SERVER_PROTOCOL: 'HTTP/1.1', SERVER_NAME: 'x', SERVER_PORT: '80', SCRIPT_NAME: '/cgi-bin/hello.ts', QUERY_STRING: '' };
    const run = (method: string) => execFileSync(path.join(repo, 'cgi-bin/hello.ts'), { cwd: path.join(repo, 'cgi-bin'), env: { ...env, REQUEST_METHOD: method } }).toString('latin1');
    const forGet = run('GET');
    const forHead = run('HEAD');
    assert.ok(forGet.endsWith('\r\n\r\nhello\n'), JSON.stringify(forGet));
    assert.equal(forHead, forGet.slice(0, forGet.indexOf('\r\n\r\n') + 4));
  });

  test('HEAD gets no body', async () => {
    const r = await rawRequest(server.port, 'HEAD /cgi-bin/echo.ts HTTP/1.1\nHost: x\nConnection: close\n\n');
    assert.equal(r.status, 200);
    assert.equal(r.rest.length, 0, 'no body bytes after the head');
  });
});
