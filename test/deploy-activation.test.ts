// The responder started by someone else with the socket already open: systemd socket activation
// (deploy/systemd, run through systemd-socket-activate: fd 3, LISTEN_FDS, LISTEN_PID), spawn-fcgi
// (deploy/spawn-fcgi.sh: fd 0), and the cgi-fcgi health check script.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { checkResponder } from '../src/fastcgi/health-check.ts';
import { socketDir, startFcgi } from '../src/deploy/stack.ts';
import { deployDir, repoRoot } from '../src/deploy/template.ts';
import { requirePeer, startProcess, stop as stopProcess, waitForPath, waitUntilReady, type ExitStatus, type ManagedProcess, type TempDir } from '../src/peers/index.ts';
import { eventually } from './fixtures/eventually.ts';

const fixtures = path.join(repoRoot, 'test/fixtures/apps');

let dir: TempDir;
before(async () => {
  dir = await socketDir('deploy-activation-');
});
after(async () => {
  await dir.cleanup();
});

/** A unit file as section -> key -> values (a key may repeat, as Environment= does). */
function parseUnit(file: string): Record<string, Record<string, string[]>> {
  const unit: Record<string, Record<string, string[]>> = {};
  let section = '';
  for (const raw of fs.readFileSync(file, 'utf8').split('\n')) {
    const line = raw.trim();
    if (!line || line.startsWith('#') || line.startsWith(';')) continue;
    const header = /^\[(.+)\]$/.exec(line);
    if (header) {
      section = header[1]!;
      unit[section] ??= {};
      continue;
    }
    const eq = line.indexOf('=');
    assert.ok(eq > 0, `${file}: cannot parse ${JSON.stringify(line)}`);
    ((unit[section] ??= {})[line.slice(0, eq).trim()] ??= []).push(line.slice(eq + 1).trim());
  }
  return unit;
}

/** Waits for the socket file without connecting to it: a connection would start the service. */
async function waitForFile(file: string, ms: number): Promise<void> {
  const deadline = Date.now() + ms;
  while (!fs.existsSync(file)) {
    assert.ok(Date.now() < deadline, `${file} did not appear within ${ms} ms`);
    await sleep(20);
  }
}

/** The exit status, or undefined after ms. A timer keeps the event loop alive: the child is unref'd. */
async function exitWithin(proc: ManagedProcess, ms: number): Promise<ExitStatus | undefined> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([proc.exited, new Promise<undefined>((resolve) => (timer = setTimeout(() => resolve(undefined), ms)))]);
  } finally {
    clearTimeout(timer);
  }
}

function comm(pid: number): string {
  try {
    return fs.readFileSync(`/proc/${pid}/comm`, 'utf8').trim();
  } catch {
    return '';
  }
}

function parentOf(pid: number): number {
  try {
    return Number(/^PPid:\s+(\d+)/m.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))![1]);
  } catch {
    return 0;
  }
}

/** The body of GET path, through the tests' raw FastCGI client. */
async function get(address: string, urlPath: string): Promise<string> {
  const { WireClient, parseCgiResponse } = await import('./fastcgi-wire.ts');
  const client = address.startsWith('/') ? await WireClient.connect(address) : await WireClient.connect(Number(address.split(':')[1]));
  try {
    client.request(1, { REQUEST_METHOD: 'GET', REQUEST_URI: urlPath, SCRIPT_NAME: urlPath, SERVER_NAME: 'localhost', SERVER_PORT: '80', SERVER_PROTOCOL: 'HTTP/1.1' });
    const res = await client.response(1, 20_000);
    const parsed = parseCgiResponse(res.stdout);
    assert.equal(parsed.status, 200, res.stdout.toString());
    return parsed.body.toString();
  } finally {
    client.close();
  }
}

describe('deploy/systemd: socket activation', () => {
  const socketUnit = path.join(deployDir, 'systemd/cgi-runner.socket');
  const serviceUnit = path.join(deployDir, 'systemd/cgi-runner.service');

  test('systemd-analyze verify accepts both units', (t) => {
    if (!requirePeer(t, 'systemd-socket-activate')) return;
    const analyze = ['/usr/bin/systemd-analyze', '/bin/systemd-analyze'].find((f) => fs.existsSync(f));
    if (!analyze) return t.skip('systemd-analyze not found');
    const r = spawnSync(analyze, ['verify', '--man=no', socketUnit, serviceUnit], { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stdout + r.stderr);
    assert.equal(r.stderr.trim(), '', 'no warnings');
  });

  test('the first connection starts the service on fd 3 with LISTEN_PID; reload replaces workers; stop exits 0', async (t) => {
    if (!requirePeer(t, 'systemd-socket-activate')) return;
    const socket = parseUnit(socketUnit);
    const service = parseUnit(serviceUnit);
    const listen = socket.Socket!.ListenStream!;
    assert.deepEqual(listen, ['/run/cgi-runner/app.sock'], 'one socket: the responder takes fd 3');
    assert.deepEqual(service.Unit!.Requires, ['cgi-runner.socket']);
    // The unit as installed in /opt/cgi-runner, moved to this checkout and a temporary socket.
    const sock = path.join(dir.path, 'app.sock');
    const local = (s: string) => s.replaceAll('/opt/cgi-runner', repoRoot).replaceAll('/usr/bin/node', process.execPath).replaceAll(listen[0]!, sock);
    const execStart = local(service.Service!.ExecStart![0]!).split(/\s+/);
    assert.ok(execStart.includes('--workers'), 'ExecStart runs workers');
    const setenv = [...(service.Service!.Environment ?? []), `SITE_APP_DIR=${fixtures}`].flatMap((e) => ['-E', e]);
    const proc = await startProcess({
      name: 'systemd-socket-activate',
      command: 'systemd-socket-activate',
      args: ['-l', sock, ...setenv, '--', ...execStart],
      cwd: local(service.Service!.WorkingDirectory![0]!),
    });
    try {
      await waitForFile(sock, 10_000);
      // On demand: nothing but the socket until a connection arrives.
      await sleep(300);
      assert.equal(comm(proc.pid), 'systemd-socket-', 'the responder has not started yet');
      const firstBody = await get(sock, '/kitchen/hello');
      assert.equal(firstBody, 'hello\n');
      // systemd-socket-activate exec'd the responder: same pid, so LISTEN_PID named it.
      assert.equal(comm(proc.pid), 'node');
      await eventually(() => proc.stderr(), /2 workers serving fcgi fd:3 \(systemd socket activation\)/);

      // Each connection goes to a worker in turn; both workers are children of the primary.
      const before = new Set<number>();
      for (let i = 0; i < 8 && before.size < 2; i++) before.add(Number(await get(sock, '/kitchen/pid')));
      assert.equal(before.size, 2, `two workers answered: ${[...before]}`);
      for (const pid of before) assert.equal(parentOf(pid), proc.pid);

      // ExecReload=/bin/kill -HUP $MAINPID
      const reload = service.Service!.ExecReload![0]!.replace('$MAINPID', String(proc.pid)).split(/\s+/);
      assert.equal(spawnSync(reload[0]!, reload.slice(1)).status, 0);
      await eventually(() => proc.stderr(), /reload done/, 30_000);
      const afterReload = new Set<number>();
      for (let i = 0; i < 8 && afterReload.size < 2; i++) afterReload.add(Number(await get(sock, '/kitchen/pid')));
      assert.equal(afterReload.size, 2);
      for (const pid of afterReload) assert.ok(!before.has(pid), `worker ${pid} is new`);

      // --log-format json: one JSON object per access line, for journald and log shippers.
      await eventually(() => proc.stdout(), /(?:.*\n){5}/);
      const access = proc
        .stdout()
        .trim()
        .split('\n')
        .map((line) => JSON.parse(line) as Record<string, unknown>);
      assert.ok(access.length >= 5, `access lines: ${JSON.stringify(proc.stdout())}`);
      for (const entry of access) assert.equal(entry.type, 'access');
      assert.ok(access.some((e) => e.uri === '/kitchen/pid' && e.status === 200 && typeof e.durationMs === 'number'));

      // systemctl stop: SIGTERM to the main process (KillMode=mixed), which stops its workers.
      const stopSeconds = Number(service.Service!.TimeoutStopSec![0]);
      process.kill(proc.pid, service.Service!.KillSignal![0] as NodeJS.Signals);
      assert.deepEqual(await exitWithin(proc, stopSeconds * 1000), { code: 0, signal: null });
    } finally {
      await stopProcess(proc, 'SIGKILL', 2000);
    }
  });
});

describe('deploy/spawn-fcgi.sh', () => {
  test('spawn-fcgi binds the socket and execs the responder on fd 0; SIGTERM stops it with 0', async (t) => {
    if (!requirePeer(t, 'spawn-fcgi')) return;
    const sock = path.join(dir.path, 'spawn.sock');
    const proc = await startProcess({
      name: 'spawn-fcgi.sh',
      command: path.join(deployDir, 'spawn-fcgi.sh'),
      args: [sock],
      env: { ...process.env, SITE_APP_DIR: fixtures },
    });
    try {
      await waitUntilReady(proc, (signal) => waitForPath(sock, 20_000, signal));
      const stat = fs.statSync(sock);
      assert.equal(stat.mode & 0o777, 0o660);
      if (process.getuid?.() === 0) assert.equal(stat.uid, Number(spawnSync('id', ['-u', 'www-data'], { encoding: 'utf8' }).stdout.trim()));
      const r = await checkResponder({ address: sock, path: '/kitchen/hello', timeoutMs: 20_000 });
      assert.ok(r.ok, r.message);
      // -n: no fork, the responder is the process we started.
      assert.equal(await get(sock, '/kitchen/pid'), `${proc.pid}\n`);
      await eventually(() => proc.stderr(), /fcgi: serving .* on fd:0 \(inherited on fd 0\)/);
      process.kill(proc.pid, 'SIGTERM');
      assert.deepEqual(await exitWithin(proc, 10_000), { code: 0, signal: null });
    } finally {
      await stopProcess(proc, 'SIGKILL', 2000);
    }
  });
});

describe('deploy/check-with-cgi-fcgi.sh', () => {
  test('exit 0 on a 2xx answer, 1 on a 404 or a dead address', async (t) => {
    if (!requirePeer(t, 'cgi-fcgi')) return;
    const app = await startFcgi({ app: path.join(deployDir, 'site.ts'), listen: 'tcp' });
    try {
      const script = path.join(deployDir, 'check-with-cgi-fcgi.sh');
      const run = (...args: string[]) => spawnSync(script, args, { encoding: 'utf8' });
      const ok = run(app.address);
      assert.equal(ok.status, 0, ok.stderr);
      assert.match(ok.stdout, /^healthy: 127\.0\.0\.1:\d+: GET \/: 200$/m);
      assert.equal(run(app.address, '/hello?x=1').status, 0);
      const notFound = run(app.address, '/no/such/page');
      assert.equal(notFound.status, 1);
      assert.match(notFound.stderr, /GET \/no\/such\/page: 404/);
      await eventually(() => app.output(), /"GET \/hello\?x=1 HTTP\/1\.1" 200 6 "-" "cgi-fcgi-check"/);
    } finally {
      await app.stop();
    }
    const dead = spawnSync(path.join(deployDir, 'check-with-cgi-fcgi.sh'), [path.join(dir.path, 'nobody.sock')], { encoding: 'utf8' });
    assert.equal(dead.status, 1);
    assert.match(dead.stderr, /unhealthy: .*cgi-fcgi failed/);
  });
});
