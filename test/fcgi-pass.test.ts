// `serve --fcgi-pass PREFIX=ADDRESS --fcgi-root DIR` in front of real php-fpm: the variables nginx's fastcgi.conf would send, GET, POST, "Primary script unknown", a php-fpm restart mid-run, and concurrency.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { startServe, type RunningServer } from '../src/commands/serve.ts';
import { makeTempDir, missingPeer, skipIfMissing, startPhpFpm, startProcess, stop, writeShared, type PhpFpmServer, type TempDir } from '../src/peers/index.ts';
import { waitFor } from './cgi-fixture.ts';
import { logged } from './fixtures/log.ts';

const repoRoot = path.resolve(import.meta.dirname, '..');

let root: TempDir;
let fpm: PhpFpmServer | undefined;
let running: RunningServer | undefined;
let base: string;
let missing: string | undefined;

before(async () => {
  missing = missingPeer(['php-fpm']);
  if (missing) return;
  root = await makeTempDir('fcgi-pass-');
  // The document root holds php/ because the URL prefix is /php: SCRIPT_FILENAME = ROOT + SCRIPT_NAME.
  const php = path.join(root.path, 'www', 'php');
  fs.mkdirSync(php, { recursive: true, mode: 0o755 });
  fs.chmodSync(path.join(root.path, 'www'), 0o755);
  await writeShared(
    path.join(php, 'vars.php'),
    `<?php
header('Content-Type: application/json');
$names = ['SCRIPT_FILENAME', 'SCRIPT_NAME', 'PATH_INFO', 'PATH_TRANSLATED', 'DOCUMENT_ROOT', 'REQUEST_URI', 'QUERY_STRING',
  'REQUEST_METHOD', 'SERVER_PROTOCOL', 'GATEWAY_INTERFACE', 'SERVER_SOFTWARE', 'REMOTE_ADDR', 'SERVER_PORT', 'HTTP_X_CUSTOM',
  'HTTP_PROXY', 'HTTP_AUTHORIZATION', 'REDIRECT_STATUS', 'CONTENT_LENGTH', 'CONTENT_TYPE'];
$out = [];
foreach ($names as $n) { $out[$n] = $_SERVER[$n] ?? null; }
$out['PHP_SELF'] = $_SERVER['PHP_SELF'];
$out['get'] = $_GET;
echo json_encode($out);
`,
  );
  await writeShared(
    path.join(php, 'post.php'),
    `<?php
header('Content-Type: text/plain');
header('X-Handled-By: php-fpm');
$body = file_get_contents('php://input');
echo $_SERVER['REQUEST_METHOD'], ' ', strlen($body), ' ', md5($body), ' ', $_POST['name'] ?? '-', "\\n";
`,
  );
  // A second prefix, for the repeated flag: /legacy goes to the same php-fpm, under the same root.
  fs.mkdirSync(path.join(root.path, 'www', 'legacy'), { mode: 0o755 });
  await writeShared(path.join(root.path, 'www', 'legacy', 'where.php'), `<?php echo $_SERVER['SCRIPT_FILENAME'], "\\n";\n`);
  await writeShared(path.join(php, 'slow.php'), `<?php usleep(((int)($_GET['ms'] ?? 50)) * 1000); echo getmypid(), ' ', $_GET['n'] ?? '', "\\n";\n`);
  fpm = await startPhpFpm({ docroot: path.join(root.path, 'www'), children: 3 });
  running = await startServe({
    port: 0,
    host: '127.0.0.1',
    cgiDir: path.join(repoRoot, 'cgi-bin'),
    timeout: 10,
    maxBody: 64 * 1024 * 1024,
    maxScripts: 8,
    fcgiDir: path.join(root.path, 'no-fcgi-here'),
    fcgiPass: [`/php=${fpm.address}`],
    fcgiRoot: path.join(root.path, 'www'),
  });
  base = `http://127.0.0.1:${running.port}`;
});

after(async () => {
  await running?.stop(5000);
  await fpm?.stop();
  await root?.cleanup();
});


describe('--fcgi-pass /php to php-fpm', () => {
  test('GET: SCRIPT_FILENAME, SCRIPT_NAME, PATH_INFO and DOCUMENT_ROOT as nginx sets them, so php-fpm finds the script', async (t) => {
    if (skipIfMissing(t, missing)) return;
    const www = path.join(root.path, 'www');
    const response = await fetch(`${base}/php/vars.php/extra/path?a=1&b=two%20words`, { headers: { 'x-custom': 'yes', proxy: 'http://evil.test', authorization: 'Basic Zm9vOmJhcg==' } });
    assert.equal(response.status, 200);
    assert.equal(response.headers.get('content-type'), 'application/json');
    const vars = (await response.json()) as Record<string, unknown>;
    assert.deepEqual(vars, {
      SCRIPT_FILENAME: `${www}/php/vars.php`,
      SCRIPT_NAME: '/php/vars.php',
      PATH_INFO: '/extra/path',
      PATH_TRANSLATED: `${www}/extra/path`,
      DOCUMENT_ROOT: www,
      REQUEST_URI: '/php/vars.php/extra/path?a=1&b=two%20words',
      QUERY_STRING: 'a=1&b=two%20words',
      REQUEST_METHOD: 'GET',
      SERVER_PROTOCOL: 'HTTP/1.1',
      GATEWAY_INTERFACE: 'CGI/1.1',
      SERVER_SOFTWARE: vars.SERVER_SOFTWARE,
      REMOTE_ADDR: '127.0.0.1',
      SERVER_PORT: String(running!.port),
      HTTP_X_CUSTOM: 'yes',
      HTTP_PROXY: null,
      HTTP_AUTHORIZATION: null,
      REDIRECT_STATUS: '200',
      CONTENT_LENGTH: null,
      CONTENT_TYPE: null,
      PHP_SELF: '/php/vars.php/extra/path',
      get: { a: '1', b: 'two words' },
    });
    assert.match(String(vars.SERVER_SOFTWARE), /^cgi-runner\//);
    // Only under the prefix: encoded dot segments cannot climb out of it (sent raw: fetch would normalize them).
    for (const target of ['/php/%2e%2e/%2e%2e/etc/passwd', '/php/..%2f..%2fetc/passwd', '/php/../../etc/passwd']) {
      const status = await new Promise<number>((resolve, reject) => {
        http.get({ host: '127.0.0.1', port: running!.port, path: target, agent: false }, (res) => resolve(res.resume().statusCode!)).on('error', reject);
      });
      assert.equal(status, 404, target);
    }
  });

  test('the command line: --fcgi-pass repeated, each prefix to its upstream under --fcgi-root', async (t) => {
    if (skipIfMissing(t, missing)) return;
    const www = path.join(root.path, 'www');
    const proc = await startProcess({
      name: 'cgi-runner serve --fcgi-pass',
      command: process.execPath,
      args: ['--import', 'tsx', 'src/cli.ts', 'serve', '--port', '0', '--fcgi-pass', `/php=${fpm!.address}`, '--fcgi-pass', `/legacy=${fpm!.address}`, '--fcgi-root', www],
      cwd: repoRoot,
    });
    try {
      const url = await waitFor('the URL line', () => /at (http:\/\/[^/]+)\/cgi-bin\//.exec(proc.stdout())?.[1], 20_000);
      assert.equal(await (await fetch(`${url}/legacy/where.php`)).text(), `${www}/legacy/where.php\n`);
      const vars = (await (await fetch(`${url}/php/vars.php`)).json()) as Record<string, unknown>;
      assert.equal(vars.SCRIPT_FILENAME, `${www}/php/vars.php`);
      assert.equal((await fetch(`${url}/elsewhere/where.php`)).status, 404, 'no prefix, no upstream');
    } finally {
      await stop(proc, 'SIGTERM', 5000);
    }
  });

  test('POST: a form and a large upload arrive whole, and the answer headers come back', async (t) => {
    if (skipIfMissing(t, missing)) return;
    const form = await fetch(`${base}/php/post.php`, { method: 'POST', body: new URLSearchParams({ name: 'ada' }) });
    assert.equal(form.headers.get('x-handled-by'), 'php-fpm');
    const formBody = 'name=ada';
    assert.equal(await form.text(), `POST ${formBody.length} ${createHash('md5').update(formBody).digest('hex')} ada\n`);
    const upload = Buffer.alloc(5 * 1024 * 1024 + 3, 'z');
    const big = await fetch(`${base}/php/post.php`, { method: 'POST', body: upload, headers: { 'content-type': 'application/octet-stream' } });
    assert.equal(await big.text(), `POST ${upload.length} ${createHash('md5').update(upload).digest('hex')} -\n`);
    // A chunked upload is read first, so php gets CONTENT_LENGTH (as nginx's fastcgi_request_buffering does).
    const chunked = await fetch(`${base}/php/post.php`, {
      method: 'POST',
      body: new ReadableStream({
        start(controller) {
          controller.enqueue(new TextEncoder().encode('abc'));
          controller.enqueue(new TextEncoder().encode('def'));
          controller.close();
        },
      }),
      duplex: 'half',
    } as RequestInit);
    assert.equal(await chunked.text(), `POST 6 ${createHash('md5').update('abcdef').digest('hex')} -\n`);
  });

  test('a missing script: php-fpm\'s 404 ("Primary script unknown" in the log, naming the upstream)', async (t) => {
    if (skipIfMissing(t, missing)) return;
    const { result, lines } = await logged(async () => {
      const response = await fetch(`${base}/php/missing.php`);
      return { status: response.status, body: await response.text() };
    });
    assert.equal(result.status, 404);
    assert.match(result.body, /File not found/);
    assert.ok(lines.some((l) => l.includes(`fastcgi: upstream unix:${fpm!.address} stderr: Primary script unknown`)), lines.join('\n'));
  });

  test('40 concurrent requests on 3 php-fpm workers', async (t) => {
    if (skipIfMissing(t, missing)) return;
    const t0 = Date.now();
    const answers = await Promise.all(
      Array.from({ length: 40 }, async (_, n) => {
        const response = await fetch(`${base}/php/slow.php?ms=20&n=${n}`);
        return { status: response.status, text: await response.text() };
      }),
    );
    for (const [n, answer] of answers.entries()) {
      assert.equal(answer.status, 200);
      assert.match(answer.text, new RegExp(`^\\d+ ${n}\\n$`));
    }
    assert.equal(new Set(answers.map((a) => a.text.split(' ')[0])).size, 3, 'every worker took requests');
    assert.ok(Date.now() - t0 < 10_000, `took ${Date.now() - t0} ms`);
  });

  test('php-fpm restarted mid-run: requests during the restart may get 502, every one after it succeeds', async (t) => {
    if (skipIfMissing(t, missing)) return;
    const results: Array<{ start: number; end: number; status: number }> = [];
    let restartedAt = 0;
    let restartStarted = 0;
    const { lines } = await logged(async () => {
      const until = performance.now() + 2500;
      const worker = async () => {
        while (performance.now() < until) {
          const start = performance.now();
          const response = await fetch(`${base}/php/slow.php?ms=10`);
          await response.text();
          results.push({ start, end: performance.now(), status: response.status });
        }
      };
      const load = Promise.all(Array.from({ length: 6 }, worker));
      await sleep(600);
      restartStarted = performance.now();
      await fpm!.restart();
      restartedAt = performance.now();
      await load;
    });
    const before = results.filter((r) => r.end < restartStarted);
    const during = results.filter((r) => r.end >= restartStarted && r.start < restartedAt);
    const later = results.filter((r) => r.start >= restartedAt);
    assert.ok(before.length > 10 && before.every((r) => r.status === 200));
    assert.ok(during.every((r) => r.status === 200 || r.status === 502), JSON.stringify(during.filter((r) => r.status !== 200)));
    assert.ok(later.length > 10, `only ${later.length} requests after the restart`);
    assert.deepEqual(later.filter((r) => r.status !== 200), [], 'every request after the restart succeeded');
    // Failures, if any, were logged with the upstream's name.
    if (during.some((r) => r.status === 502)) assert.ok(lines.some((l) => l.includes(`fastcgi: upstream unix:${fpm!.address}`)), lines.join('\n'));
  });
});
