// Apache httpd run with exactly deploy/apache: httpd.conf (the official image's layout) with
// cgi-runner.conf (SetHandler to the unix socket, ProxyPass over TCP, both with enablereuse=on, and a
// location protected by the app as a FastCGI Authorizer), and mod_fcgid.conf starting the responder itself.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { serverConnections, socketDir, startDeployApache, startFcgi, type DeployApache, type Fcgi } from '../src/deploy/stack.ts';
import { deployDir, repoRoot } from '../src/deploy/template.ts';
import { freePort, missingPeer, requirePeer, skipIfMissing, startApache, type TempDir } from '../src/peers/index.ts';
import { eventually } from './fixtures/eventually.ts';
import { expectCgiDirScripts, expectSequentialHellos, expectStreamedBody, type EnvReport } from './fixtures/front-checks.ts';

const site = path.join(deployDir, 'site.ts');
const fixtures = path.join(repoRoot, 'test/fixtures/apps');
const PASSWORD = 'correct horse';

let sockets: TempDir | undefined;
let unix: Fcgi | undefined;
let tcp: Fcgi | undefined;
let cgi: Fcgi | undefined;
let apache: DeployApache | undefined;
let base = '';
let missing: string | undefined;

before(async () => {
  missing = missingPeer(['apache2', 'mod_proxy_fcgi', 'mod_authnz_fcgi']);
  if (missing) return;
  sockets = await socketDir();
  const env = { ...process.env, SITE_APP_DIR: fixtures, SITE_USER: 'demo', SITE_PASSWORD: PASSWORD };
  const cgiSocket = path.join(sockets.path, 'cgi.sock');
  [unix, tcp, cgi] = await Promise.all([
    startFcgi({ app: site, listen: path.join(sockets.path, 'app.sock'), env }),
    startFcgi({ app: site, listen: 'tcp', env }),
    startFcgi({ listen: cgiSocket, args: ['--cgi-dir', path.join(repoRoot, 'cgi-bin')], env }),
  ]);
  const port = await freePort();
  base = `http://127.0.0.1:${port}`;
  apache = await startDeployApache({
    port,
    env: { HTTPD_PORT: `127.0.0.1:${port}`, APP_SOCKET: unix.address, APP_TCP: tcp.address, CGI_SOCKET: cgiSocket, CGI_ROOT: repoRoot },
  });
});

after(async () => {
  await apache?.stop();
  await Promise.all([unix?.stop(), tcp?.stop(), cgi?.stop()]);
  await sockets?.cleanup();
});

const basic = (user: string, password: string) => ({ authorization: 'Basic ' + Buffer.from(`${user}:${password}`).toString('base64') });

describe('deploy/apache with Apache httpd (mod_proxy_fcgi, mod_authnz_fcgi)', () => {
  test('/ goes through SetHandler to the unix socket, /tcp/ through ProxyPass over TCP', async (t) => {
    if (skipIfMissing(t, missing)) return;
    const mark = apache!.errors().length;
    assert.equal((await (await fetch(`${base}/kitchen/pid`)).text()).trim(), String(unix!.pid));
    assert.equal((await (await fetch(`${base}/tcp/kitchen/pid`)).text()).trim(), String(tcp!.pid));
    const viaSocket = (await (await fetch(`${base}/kitchen/env?x=1`)).json()) as EnvReport;
    assert.match(viaSocket.params.SCRIPT_FILENAME!, /^proxy:fcgi:\/\/localhost\//);
    assert.equal(viaSocket.params.REQUEST_URI, '/kitchen/env?x=1');
    const viaTcp = (await (await fetch(`${base}/tcp/kitchen/env?x=1`)).json()) as EnvReport;
    assert.equal(viaTcp.params.SCRIPT_FILENAME, `proxy:fcgi://${tcp!.address}/kitchen/env`);
    assert.equal(viaTcp.params.REQUEST_URI, '/tcp/kitchen/env?x=1');
    assert.match(await (await fetch(`${base}/`)).text(), /^cgi-runner: /);
    const post = await fetch(`${base}/tcp/kitchen/echo`, { method: 'POST', body: 'a=1&b=2' });
    assert.equal(((await post.json()) as { text: string }).text, 'a=1&b=2');
    assert.deepEqual(apache!.errors().slice(mark), []);
    // No warning either: one would say that a worker's parameters (enablereuse) were ignored.
    assert.deepEqual(apache!.errorLog().split('\n').filter((l) => /:warn\]/.test(l)), []);
  });

  test('enablereuse=on: connections to the responder stay open for the next requests, on both transports', async (t) => {
    if (skipIfMissing(t, missing)) return;
    await expectSequentialHellos([`${base}/kitchen/hello`, `${base}/tcp/kitchen/hello`], 20);
    assert.ok(serverConnections(unix!.address) >= 1, 'unix socket connections kept');
    assert.ok(serverConnections(tcp!.address) >= 1, 'TCP connections kept');
  });

  test('flushpackets=auto: a streamed answer reaches the client while the app still writes it, on both transports', async (t) => {
    if (skipIfMissing(t, missing)) return;
    const mark = apache!.errors().length;
    await expectStreamedBody((p) => `${base}/kitchen/${p}`, 'deploy-unix');
    await expectStreamedBody((p) => `${base}/tcp/kitchen/${p}`, 'deploy-tcp');
    assert.deepEqual(apache!.errors().slice(mark), []);
  });

  test('/private/ asks for a password that the app checks in the Authorizer role', async (t) => {
    if (skipIfMissing(t, missing)) return;
    const mark = apache!.errors().length;
    const anonymous = await fetch(`${base}/private/kitchen/env`);
    assert.equal(anonymous.status, 401);
    assert.equal(anonymous.headers.get('www-authenticate'), 'Basic realm="cgi-runner"');
    await anonymous.arrayBuffer();
    const wrong = await fetch(`${base}/private/kitchen/env`, { headers: basic('demo', 'wrong') });
    assert.equal(wrong.status, 401);
    await wrong.arrayBuffer();
    const ok = await fetch(`${base}/private/kitchen/env`, { headers: basic('demo', PASSWORD) });
    assert.equal(ok.status, 200);
    const env = (await ok.json()) as EnvReport;
    assert.equal(env.params.REMOTE_USER, 'demo');
    assert.equal(env.params.AUTH_TYPE, 'Basic');
    assert.equal(env.params.SITE_USER, 'demo', "the authorizer's Variable-SITE_USER reached the app");
    assert.equal(env.params.HTTP_AUTHORIZATION, undefined, 'the password does not reach the app');
    assert.match(await (await fetch(`${base}/private/`, { headers: basic('demo', PASSWORD) })).text(), /signed in as demo/);
    // The Authorizer calls went to the TCP responder (mod_authnz_fcgi speaks TCP only).
    await eventually(() => tcp!.output(), /"GET \/private\/kitchen\/env HTTP\/1\.1" 200 - /);
    // A wrong password is logged by Apache as an error; nothing else is.
    const errors = apache!.errors().slice(mark);
    assert.equal(errors.length, 1, errors.join('\n'));
    assert.match(errors[0]!, /AH01617: user demo: authentication failure for "\/private\/kitchen\/env": Password Mismatch/);
  });

  test('access lines in the combined log format on stdout (CustomLog /proc/self/fd/1 combined)', async (t) => {
    if (skipIfMissing(t, missing)) return;
    await (await fetch(`${base}/tcp/kitchen/hello`, { headers: { 'user-agent': 'deploy-test/1', referer: 'http://ref.example/' } })).text();
    assert.match(apache!.accessLog(), /^127\.0\.0\.1 - - \[[^\]]+\] "GET \/tcp\/kitchen\/hello HTTP\/1\.1" 200 6 "http:\/\/ref\.example\/" "deploy-test\/1"$/m);
  });
});

describe('deploy/apache/cgi-dir.conf: classic CGI through `fcgi --cgi-dir`', () => {
  test('/cgi-bin/ runs the scripts, with PATH_INFO, and nothing outside the directory', async (t) => {
    if (skipIfMissing(t, missing)) return;
    const mark = apache!.errors().length;
    await expectCgiDirScripts(base);
    // The cgi-dir responder answered /cgi-bin/, not the app behind <Location "/">.
    assert.doesNotMatch(unix!.output(), /cgi-bin/);
    for (const line of apache!.errors().slice(mark)) assert.match(line, /AH01071: Got error 'fastcgi: refusing/);
  });
});

describe('deploy/apache/mod_fcgid.conf: mod_fcgid starts the responder itself on fd 0', () => {
  test('requests reach responders that mod_fcgid spawned, and Apache stops them', async (t) => {
    if (!requirePeer(t, 'apache2') || !requirePeer(t, 'mod_fcgid')) return;
    // Debian's layout: the module from libapache2-mod-fcgid, and the recipe included as a conf-available file.
    const server = await startApache({
      modules: ['fcgid'],
      logLevel: 'info',
      config: `Define CGI_RUNNER_ROOT ${repoRoot}\nInclude ${path.join(deployDir, 'apache/mod_fcgid.conf')}\n`,
    });
    let pids: number[] = [];
    try {
      const first = await fetch(`${server.url}/fcgid/hello`);
      assert.equal(first.status, 200);
      assert.equal(await first.text(), 'hello\n');
      // One request at a time per process: concurrent requests make mod_fcgid start more of them.
      const answers = await Promise.all(Array.from({ length: 12 }, () => fetch(`${server.url}/fcgid/hello`).then(async (r) => [r.status, await r.text()])));
      for (const answer of answers) assert.deepEqual(answer, [200, 'hello\n']);
      const index = await fetch(`${server.url}/fcgid/`);
      assert.match(await index.text(), /^cgi-runner: .*\/hello/);
      const log = server.errorLog();
      assert.match(log, /fcgi: serving .*deploy\/site\.ts on fd:0 \(inherited on fd 0\)/);
      pids = [...log.matchAll(/mod_fcgid: server .*cgi-runner\.js\((\d+)\) started/g)].map((m) => Number(m[1]));
      assert.ok(pids.length >= 1, 'mod_fcgid logged the processes it started');
      assert.deepEqual(server.errors(), []);
    } finally {
      await server.stop();
    }
    for (const pid of pids) assert.ok(!fs.existsSync(`/proc/${pid}`), `responder ${pid} stopped with Apache`);
  });
});
