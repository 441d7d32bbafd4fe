// Operating the responder: `fcgi --check ADDRESS` as a health check (exit codes for Docker HEALTHCHECK,
// systemd and load balancers), access lines in the combined format or as JSON, and error lines that
// name the request and the app.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import net from 'node:net';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { checkResponder } from '../src/fastcgi/health-check.ts';
import { cliCommand, socketDir, startFcgi, type Fcgi } from '../src/deploy/stack.ts';
import { deployDir, repoRoot } from '../src/deploy/template.ts';
import type { TempDir } from '../src/peers/index.ts';
import { WireClient } from './fastcgi-wire.ts';
import { eventually } from './fixtures/eventually.ts';

const site = path.join(deployDir, 'site.ts');
const kitchen = path.join(repoRoot, 'test/fixtures/apps/kitchen.ts');

let dir: TempDir;
let app: Fcgi;
let jsonApp: Fcgi;

before(async () => {
  dir = await socketDir('deploy-ops-');
  const env = { ...process.env, SITE_APP_DIR: path.join(repoRoot, 'test/fixtures/apps') };
  [app, jsonApp] = await Promise.all([
    startFcgi({ app: site, listen: path.join(dir.path, 'app.sock'), env, args: ['--max-conns', '50', '--max-reqs', '40'] }),
    startFcgi({ app: kitchen, listen: 'tcp', args: ['--log-format', 'json'] }),
  ]);
});

after(async () => {
  await Promise.all([app?.stop(), jsonApp?.stop()]);
  await dir?.cleanup();
});

/** Runs `cgi-runner fcgi ARGS` to completion (asynchronously: a test server may be in this process). */
function runCli(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const { command, args: argv } = cliCommand(['fcgi', ...args]);
  return new Promise((resolve, reject) => {
    const child = spawn(command, argv, { cwd: repoRoot, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => (stdout += c));
    child.stderr.on('data', (c: Buffer) => (stderr += c));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

/** One request as nginx would send it with deploy/nginx/fastcgi.conf. */
async function request(address: string, uri: string, extra: Record<string, string> = {}): Promise<void> {
  const client = address.startsWith('/') ? await WireClient.connect(address) : await WireClient.connect(Number(address.split(':')[1]));
  try {
    const [scriptName, query = ''] = uri.split('?');
    client.request(1, {
      REQUEST_METHOD: 'GET',
      REQUEST_URI: uri,
      SCRIPT_NAME: scriptName!,
      QUERY_STRING: query,
      SERVER_PROTOCOL: 'HTTP/1.1',
      SERVER_NAME: 'example.test',
      SERVER_PORT: '80',
      REMOTE_ADDR: '192.0.2.7',
      HTTP_HOST: 'example.test',
      ...extra,
    });
    await client.response(1, 10_000);
  } finally {
    client.close();
  }
}

describe('fcgi --check ADDRESS', () => {
  test('exit 0 and one line on a healthy responder, with the GET_VALUES answers', async () => {
    const r = await runCli(['--check', app.address, '--check-path', '/kitchen/hello']);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^healthy: unix:.*app\.sock: GET \/kitchen\/hello: 200 OK in \d+ ms \(FCGI_MAX_CONNS=50, FCGI_MAX_REQS=40, FCGI_MPXS_CONNS=1\)\n$/);
    await eventually(() => app.output(), /"GET \/kitchen\/hello HTTP\/1\.1" 200 6 "-" "cgi-runner-check"/);
  });

  test('exit 1 with the reason: an error status, a dead address, a responder that does not answer', async () => {
    // Accepts connections, never answers: the timeout ends the check.
    const silent = net.createServer(() => {});
    await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
    try {
      const port = (silent.address() as net.AddressInfo).port;
      const started = Date.now();
      // Three CLI runs at once: each pays for starting Node.
      const [notFound, dead, hung] = await Promise.all([
        runCli(['--check', app.address, '--check-path', '/kitchen/status?code=404']),
        runCli(['--check', path.join(dir.path, 'nobody.sock')]),
        runCli(['--check', `127.0.0.1:${port}`, '--check-timeout', '1']),
      ]);
      assert.equal(notFound.code, 1);
      assert.match(notFound.stderr, /^unhealthy: .*GET \/kitchen\/status\?code=404: 404 Not Found/);
      assert.equal(dead.code, 1);
      assert.match(dead.stderr, /^unhealthy: unix:.*nobody\.sock: cannot connect: connect ENOENT/);
      assert.equal(hung.code, 1);
      assert.match(hung.stderr, /^unhealthy: 127\.0\.0\.1:\d+: no answer within 1000 ms while waiting for GET_VALUES_RESULT/);
      assert.ok(Date.now() - started < 15_000);
    } finally {
      silent.close();
    }
  });

  test('--check-root sends SCRIPT_FILENAME, so `fcgi --cgi-dir` can be checked with one of its scripts', async () => {
    const cgi = await startFcgi({ listen: 'tcp', args: ['--cgi-dir', path.join(repoRoot, 'cgi-bin')] });
    try {
      const r = await runCli(['--check', cgi.address, '--check-root', repoRoot, '--check-path', '/cgi-bin/hello.sh']);
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stdout, /^healthy: 127\.0\.0\.1:\d+: GET \/cgi-bin\/hello\.sh: 200 OK/);
      // Without it the script cannot be found: the check says so.
      const without = await checkResponder({ address: cgi.address, path: '/cgi-bin/hello.sh' });
      assert.equal(without.ok, false);
      assert.equal(without.status, 404);
      assert.match(without.message, /stderr: fastcgi: neither SCRIPT_FILENAME nor DOCUMENT_ROOT/);
    } finally {
      await cgi.stop();
    }
  });

  test('2xx and 3xx are healthy, 5xx is not; a throwing app is reported with its stderr', async () => {
    assert.equal((await checkResponder({ address: jsonApp.address, path: '/status?code=201' })).ok, true);
    const redirect = await checkResponder({ address: jsonApp.address, path: '/status?code=302' });
    assert.equal(redirect.ok, true);
    assert.equal(redirect.status, 302);
    const unavailable = await checkResponder({ address: jsonApp.address, path: '/status?code=503' });
    assert.equal(unavailable.ok, false);
    assert.equal(unavailable.status, 503);
    const thrown = await checkResponder({ address: jsonApp.address, path: '/throw' });
    assert.equal(thrown.ok, false);
    assert.match(thrown.message, /GET \/throw: 500 Internal Server Error .*stderr: app: the app failed on purpose/);
  });
});

describe('logs', () => {
  test('access lines in the combined log format on stdout', async () => {
    await request(app.address, '/kitchen/hello?lang=en', { HTTP_REFERER: 'http://example.test/start', HTTP_USER_AGENT: 'Mozilla/5.0 "quoted"', REMOTE_USER: 'alice' });
    await eventually(
      () => app.output(),
      /^192\.0\.2\.7 - alice \[\d{2}\/[A-Z][a-z]{2}\/\d{4}:\d{2}:\d{2}:\d{2} \+0000\] "GET \/kitchen\/hello\?lang=en HTTP\/1\.1" 200 6 "http:\/\/example\.test\/start" "Mozilla\/5\.0 \\"quoted\\""$/m,
    );
  });

  test('an error names the app and the request in its line, and the access line says 500', async () => {
    await request(app.address, '/kitchen/throw');
    const [line] = await eventually(() => app.output(), /^.*app: request failed: Error: the app failed on purpose.*$/m);
    // The stack follows the message; the tags close the record.
    await eventually(() => app.output(), new RegExp(`\\[${site.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}, request 1, uri=/kitchen/throw\\]`));
    assert.ok(line);
    await eventually(() => app.output(), /"GET \/kitchen\/throw HTTP\/1\.1" 500 22 /);
  });

  test('--log-format json: access and error records, one JSON object per line, for log shippers', async () => {
    await request(jsonApp.address, '/hello', { HTTP_USER_AGENT: 'curl/8' });
    await request(jsonApp.address, '/throw');
    await eventually(() => jsonApp.output(), /"type":"error"/);
    await eventually(() => jsonApp.output(), /"uri":"\/throw","protocol"/);
    const records = jsonApp
      .output()
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l) as Record<string, unknown>);
    const hello = records.find((r) => r.type === 'access' && r.uri === '/hello');
    assert.ok(hello, 'access record for /hello');
    assert.equal(hello.status, 200);
    assert.equal(hello.bytes, 6);
    assert.equal(hello.remoteAddr, '192.0.2.7');
    assert.equal(hello.userAgent, 'curl/8');
    assert.equal(hello.target, kitchen);
    assert.equal(hello.requestId, 1);
    assert.equal(typeof hello.durationMs, 'number');
    assert.ok(!Number.isNaN(Date.parse(hello.time as string)));
    const error = records.find((r) => r.type === 'error' && r.uri === '/throw');
    assert.ok(error, 'error record');
    assert.match(error.message as string, /^app: request failed: Error: the app failed on purpose/);
    assert.equal(error.requestId, 1);
    assert.equal(error.target, kitchen);
    assert.equal(error.uri, '/throw');
    const failedAccess = records.find((r) => r.type === 'access' && r.uri === '/throw');
    assert.equal(failedAccess?.status, 500);
  });
});
