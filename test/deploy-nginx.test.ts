// nginx run with exactly deploy/nginx (the templates rendered as the nginx image renders them, and
// fastcgi.conf), in front of the responder serving deploy/site.ts over a unix socket and over TCP.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { serverConnections, socketDir, startDeployNginx, startFcgi, type DeployNginx, type Fcgi } from '../src/deploy/stack.ts';
import { deployDir, repoRoot } from '../src/deploy/template.ts';
import { freePort, missingPeer, skipIfMissing, type TempDir } from '../src/peers/index.ts';
import { expectCgiDirScripts, expectSequentialHellos, type EnvReport } from './fixtures/front-checks.ts';

const site = path.join(deployDir, 'site.ts');
const fixtures = path.join(repoRoot, 'test/fixtures/apps');

let sockets: TempDir | undefined;
let unix: Fcgi | undefined;
let tcp: Fcgi | undefined;
let cgi: Fcgi | undefined;
let nginx: DeployNginx | undefined;
let base = '';
let cgiBase = '';
let missing: string | undefined;

before(async () => {
  missing = missingPeer(['nginx']);
  if (missing) return;
  sockets = await socketDir();
  // The site app with the test apps mounted: /kitchen/env, /kitchen/pid... (any prefix before them is skipped).
  const env = { ...process.env, SITE_APP_DIR: fixtures };
  const cgiSocket = path.join(sockets.path, 'cgi.sock');
  [unix, tcp, cgi] = await Promise.all([
    startFcgi({ app: site, listen: path.join(sockets.path, 'app.sock'), env }),
    startFcgi({ app: site, listen: 'tcp', env }),
    startFcgi({ listen: cgiSocket, args: ['--cgi-dir', path.join(repoRoot, 'cgi-bin')], env }),
  ]);
  const [port, cgiPort] = [await freePort(), await freePort()];
  base = `http://127.0.0.1:${port}`;
  cgiBase = `http://127.0.0.1:${cgiPort}`;
  nginx = await startDeployNginx({
    vars: {
      NGINX_PORT: `127.0.0.1:${port}`,
      NGINX_CGI_PORT: `127.0.0.1:${cgiPort}`,
      APP_SOCKET: unix.address,
      APP_TCP: tcp.address,
      CGI_SOCKET: cgiSocket,
      CGI_ROOT: repoRoot,
    },
  });
});

after(async () => {
  await nginx?.stop();
  await Promise.all([unix?.stop(), tcp?.stop(), cgi?.stop()]);
  await sockets?.cleanup();
});

function httpGet(url: string, headers: Record<string, string>): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    http
      .get(url, { headers }, (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => (body += c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
      })
      .on('error', reject);
  });
}

describe('deploy/nginx with nginx', () => {
  test('every template in deploy/nginx/templates is rendered, with no placeholder left', (t) => {
    if (skipIfMissing(t, missing)) return;
    const templates = fs.readdirSync(path.join(deployDir, 'nginx/templates')).filter((f) => f.endsWith('.template'));
    assert.deepEqual(nginx!.rendered.map((f) => path.basename(f) + '.template').sort(), templates.sort());
    for (const file of nginx!.rendered) assert.doesNotMatch(fs.readFileSync(file, 'utf8'), /\$\{[A-Z_]+\}/, file);
  });

  test('/ goes to the responder over the unix socket and /tcp/ to the one over TCP', async (t) => {
    if (skipIfMissing(t, missing)) return;
    const mark = nginx!.nginx.errors().length;
    const overUnix = await fetch(`${base}/kitchen/pid`);
    assert.equal(overUnix.status, 200);
    assert.equal((await overUnix.text()).trim(), String(unix!.pid));
    const overTcp = await fetch(`${base}/tcp/kitchen/pid`);
    assert.equal(overTcp.status, 200);
    assert.equal((await overTcp.text()).trim(), String(tcp!.pid));
    // The site index and an app from the request path.
    assert.match(await (await fetch(`${base}/`)).text(), /^cgi-runner: .*\/kitchen/);
    assert.equal(await (await fetch(`${base}/tcp/kitchen/hello`)).text(), 'hello\n');
    assert.equal((await fetch(`${base}/no/such/app`)).status, 404);
    assert.deepEqual(nginx!.nginx.errors().slice(mark), []);
  });

  test('fastcgi.conf sends the CGI variables, each once, and never a Proxy header as HTTP_PROXY', async (t) => {
    if (skipIfMissing(t, missing)) return;
    // node:http, because fetch may drop a Proxy header on its own.
    const res = await httpGet(`${base}/tcp/kitchen/env?a=1&b=%20`, { proxy: 'http://evil.example', 'x-custom': 'yes' });
    assert.equal(res.status, 200);
    const { params, url, role } = JSON.parse(res.body) as EnvReport;
    assert.equal(role, 'responder');
    const port = new URL(base).port;
    assert.equal(url, `${base}/tcp/kitchen/env?a=1&b=%20`);
    assert.equal(params.REQUEST_METHOD, 'GET');
    assert.equal(params.REQUEST_URI, '/tcp/kitchen/env?a=1&b=%20');
    assert.equal(params.QUERY_STRING, 'a=1&b=%20');
    assert.equal(params.SCRIPT_NAME, '/tcp/kitchen/env');
    assert.equal(params.DOCUMENT_URI, '/tcp/kitchen/env');
    assert.match(params.SCRIPT_FILENAME!, /\/tcp\/kitchen\/env$/);
    assert.equal(params.GATEWAY_INTERFACE, 'CGI/1.1');
    assert.match(params.SERVER_SOFTWARE!, /^nginx\//);
    assert.equal(params.SERVER_PROTOCOL, 'HTTP/1.1');
    assert.equal(params.REQUEST_SCHEME, 'http');
    assert.equal(params.SERVER_PORT, port);
    assert.equal(params.REMOTE_ADDR, '127.0.0.1');
    assert.match(params.REMOTE_PORT!, /^\d+$/);
    assert.equal(params.HTTP_X_CUSTOM, 'yes');
    assert.ok(!params.HTTP_PROXY, `the Proxy header must not arrive as HTTP_PROXY (httpoxy), got ${params.HTTP_PROXY}`);
    assert.equal(params.HTTPS, undefined);
  });

  test('upstream keepalive with fastcgi_keep_conn: connections outlive their requests and are reused', async (t) => {
    if (skipIfMissing(t, missing)) return;
    await expectSequentialHellos([`${base}/kitchen/hello`, `${base}/tcp/kitchen/hello`], 20);
    // One nginx worker, sequential requests: one connection each way, kept open and used again.
    const [onUnix, onTcp] = [serverConnections(unix!.address), serverConnections(tcp!.address)];
    assert.ok(onUnix >= 1 && onUnix <= 2, `unix socket connections: ${onUnix}`);
    assert.ok(onTcp >= 1 && onTcp <= 2, `TCP connections: ${onTcp}`);
  });

  test('a POST body and a large answer pass through both ways', async (t) => {
    if (skipIfMissing(t, missing)) return;
    for (const prefix of ['', '/tcp']) {
      const body = 'x'.repeat(300_000);
      const res = await fetch(`${base}${prefix}/kitchen/echo`, { method: 'POST', body, headers: { 'content-type': 'text/plain' } });
      assert.equal(res.status, 200);
      const report = (await res.json()) as { size: number; contentLength: string };
      assert.equal(report.size, body.length);
      assert.equal(report.contentLength, String(body.length));
      const big = await fetch(`${base}${prefix}/kitchen/big?bytes=2000000`);
      assert.equal((await big.arrayBuffer()).byteLength, 2_000_000);
    }
  });

  test('classic CGI through `fcgi --cgi-dir` (cgi.conf.template): a process per request, PATH_INFO, 404', async (t) => {
    if (skipIfMissing(t, missing)) return;
    const mark = nginx!.nginx.errors().length;
    const env = await expectCgiDirScripts(cgiBase, { contentType: 'text/plain; charset=utf-8', headers: { 'x-custom': 'yes' } });
    assert.match(env, /^HTTP_X_CUSTOM=yes$/m);
    assert.match(env, /^GATEWAY_INTERFACE=CGI\/1\.1$/m);
    assert.match(env, new RegExp(`^cwd: ${repoRoot}/cgi-bin$`, 'm'));
    // Only /cgi-bin/ is served: the files around the scripts are not.
    assert.equal((await fetch(`${cgiBase}/package.json`)).status, 404);
    assert.equal((await fetch(`${cgiBase}/cgi-bin/%2e%2e/package.json`)).status, 404);
    // The 404s are reported to nginx on FastCGI stderr: nothing else went wrong.
    for (const line of nginx!.nginx.errors().slice(mark)) assert.match(line, /FastCGI sent in stderr: "fastcgi: refusing/);
  });
});
