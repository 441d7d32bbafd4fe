// The FastCGI responder with libfcgi's cgi-fcgi, spawn-fcgi (socket on fd 0), systemd socket activation
// (fd 3), node:cluster workers, unix socket handling, and graceful stops on SIGTERM and SIGQUIT.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { describe, test, type TestContext } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  cgiFcgiRequest,
  freePort,
  makeTempDir,
  processGroupMembers,
  requirePeer,
  startProcess,
  startSpawnFcgi,
  stop,
  waitForPort,
  waitUntilReady,
} from '../src/peers/index.ts';
import { fcgiCommand, fixtureApp, repoRoot, startResponder } from './fixtures/responder.ts';
import { eventually } from './fixtures/eventually.ts';

const kitchen = fixtureApp('kitchen.ts');

/** FastCGI params as a web server would send them for GET/POST `uri`. */
function params(uri: string, method = 'GET', extra: Record<string, string> = {}): Record<string, string> {
  const [path, query = ''] = uri.split('?');
  return {
    GATEWAY_INTERFACE: 'CGI/1.1',
    SERVER_PROTOCOL: 'HTTP/1.1',
    SERVER_NAME: 'localhost',
    SERVER_PORT: '80',
    REQUEST_METHOD: method,
    REQUEST_URI: uri,
    SCRIPT_NAME: path!,
    QUERY_STRING: query,
    HTTP_HOST: 'example.test',
    REMOTE_ADDR: '127.0.0.1',
    ...extra,
  };
}

/** Resolves to the connect error code, or 'connected'. */
function tryConnect(port: number): Promise<string> {
  return new Promise((resolve) => {
    const socket = net.connect({ host: '127.0.0.1', port });
    socket.once('connect', () => {
      socket.destroy();
      resolve('connected');
    });
    socket.once('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? err.message));
  });
}

/** Resolves when no live process is left in the group (an exited leader's children may take a moment). */
async function groupGone(pgid: number, ms = 5000): Promise<number[]> {
  const deadline = Date.now() + ms;
  while (processGroupMembers(pgid).length > 0 && Date.now() < deadline) await sleep(20);
  return processGroupMembers(pgid);
}

describe("libfcgi's cgi-fcgi against the responder", () => {
  test('GET, POST and a 404 from the app', async (t) => {
    if (!requirePeer(t, 'cgi-fcgi')) return;
    const app = await startResponder({ app: kitchen, listen: 'tcp' });
    try {
      const hello = await cgiFcgiRequest({ connect: app.address, params: params('/hello') });
      assert.equal(hello.status, 200);
      assert.equal(hello.headers.get('content-type'), 'text/plain; charset=utf-8');
      assert.equal(hello.text(), 'hello\n');

      const env = await cgiFcgiRequest({ connect: app.address, params: params('/env?q=1') });
      const report = JSON.parse(env.text()) as { url: string; role: string };
      assert.equal(report.url, 'http://example.test/env?q=1');
      assert.equal(report.role, 'responder');

      const body = 'name=value&' + 'x'.repeat(100_000);
      const post = await cgiFcgiRequest({ connect: app.address, params: params('/echo', 'POST', { CONTENT_TYPE: 'application/x-www-form-urlencoded' }), body });
      assert.equal(post.status, 200);
      const echoed = JSON.parse(post.text()) as { method: string; size: number; contentType: string };
      assert.deepEqual([echoed.method, echoed.size, echoed.contentType], ['POST', body.length, 'application/x-www-form-urlencoded']);

      const missing = await cgiFcgiRequest({ connect: app.address, params: params('/nope') });
      assert.equal(missing.status, 404);
      assert.equal(missing.statusText, 'Not Found');
      assert.equal(missing.text(), 'no route nope\n');

      const teapot = await cgiFcgiRequest({ connect: app.address, params: params('/teapot') });
      assert.equal(teapot.status, 418);
      assert.deepEqual(teapot.headers.getSetCookie(), ['a=1; Path=/', 'b=2; Path=/; HttpOnly', 'c=3, with comma; Path=/']);
    } finally {
      await app.stop();
    }
  });
});

describe('inherited listening sockets', () => {
  test('spawn-fcgi hands the responder a unix socket on fd 0', async (t) => {
    if (!requirePeer(t, 'spawn-fcgi') || !requirePeer(t, 'cgi-fcgi')) return;
    const { command, args } = fcgiCommand(['--app', kitchen]);
    // No --listen: the socket spawn-fcgi bound (mode 0666) is the responder's fd 0.
    const app = await startSpawnFcgi({ command, args, cwd: repoRoot, listen: 'unix' });
    try {
      assert.equal(fs.statSync(app.socketPath!).mode & 0o777, 0o666);
      const res = await cgiFcgiRequest({ connect: app.address, params: params('/pid') });
      assert.equal(res.status, 200);
      // spawn-fcgi -n execs the app: the process we started is the responder.
      assert.equal(res.text(), `${app.pid}\n`);
      const post = await cgiFcgiRequest({ connect: app.address, params: params('/echo', 'POST'), body: 'over fd 0' });
      assert.equal((JSON.parse(post.text()) as { text: string }).text, 'over fd 0');
      assert.match(app.process.stderr(), /serving .*kitchen\.ts on fd:0 \(inherited on fd 0\)/);
    } finally {
      await app.stop();
    }
  });

  test('systemd-socket-activate hands the responder fd 3 with LISTEN_FDS and LISTEN_PID', async (t) => {
    if (!requirePeer(t, 'systemd-socket-activate') || !requirePeer(t, 'cgi-fcgi')) return;
    const port = await freePort();
    const { command, args } = fcgiCommand(['--app', kitchen]);
    // It execs the command on the first connection, keeping its pid, which is what LISTEN_PID names.
    const proc = await startProcess({
      name: 'systemd-socket-activate',
      command: 'systemd-socket-activate',
      args: ['-l', `127.0.0.1:${port}`, command, ...args],
      cwd: repoRoot,
    });
    try {
      await waitUntilReady(proc, (signal) => waitForPort(port, '127.0.0.1', 10_000, signal));
      const res = await cgiFcgiRequest({ connect: `127.0.0.1:${port}`, params: params('/pid'), timeoutMs: 20_000 });
      assert.equal(res.status, 200);
      assert.equal(res.text(), `${proc.pid}\n`);
      const env = await cgiFcgiRequest({ connect: `127.0.0.1:${port}`, params: params('/hello') });
      assert.equal(env.text(), 'hello\n');
      assert.match(proc.stderr(), /on fd:3 \(systemd socket activation\)/);
    } finally {
      await stop(proc);
    }
  });

  test('--listen fd:N serves on a listening socket passed as descriptor N', async (t) => {
    // python3 is the parent that passes the socket.
    if (!requirePeer(t, 'cgi-fcgi') || !requirePeer(t, 'python3')) return;
    const port = await freePort();
    const { command, args } = fcgiCommand(['--app', kitchen, '--listen', 'fd:5']);
    // A parent that binds and listens, then execs the responder with the socket on fd 5 (as a
    // supervisor such as s6 or runit's socket helpers would).
    const launcher = `import os, socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('127.0.0.1', ${port})); s.listen(64)
os.dup2(s.fileno(), 5)
os.execvp(sys.argv[1], sys.argv[1:])`;
    const proc = await startProcess({ name: 'fcgi --listen fd:5', command: 'python3', args: ['-c', launcher, command, ...args], cwd: repoRoot });
    try {
      await waitUntilReady(proc, (signal) => waitForPort(port, '127.0.0.1', 10_000, signal));
      const res = await cgiFcgiRequest({ connect: `127.0.0.1:${port}`, params: params('/hello'), timeoutMs: 20_000 });
      assert.equal(res.status, 200);
      assert.equal(res.text(), 'hello\n');
      await eventually(() => proc.stderr(), /on fd:5 \(given\)/);
    } finally {
      await stop(proc);
    }
  });

  test('no --listen and no inherited socket: exits non-zero and says how to pass one', () => {
    const { command, args } = fcgiCommand(['--app', kitchen]);
    const env = { ...process.env };
    delete env.LISTEN_FDS;
    delete env.LISTEN_PID;
    const result = spawnSync(command, args, { cwd: repoRoot, env, stdio: ['ignore', 'pipe', 'pipe'], encoding: 'utf8', timeout: 20_000 });
    assert.notEqual(result.status, 0);
    assert.equal(result.signal, null);
    assert.match(result.stderr, /no --listen given and no inherited listening socket/);
    assert.match(result.stderr, /--listen 127\.0\.0\.1:9000/);
    assert.match(result.stderr, /spawn-fcgi/);
    assert.match(result.stderr, /systemd socket activation/);
  });
});

describe('workers and unix sockets', () => {
  test('--workers 2 serves requests from two worker processes and stops on SIGTERM', async (t) => {
    if (!requirePeer(t, 'cgi-fcgi')) return;
    const app = await startResponder({ app: kitchen, listen: 'tcp', args: ['--workers', '2'] });
    try {
      // The port accepts as soon as one worker listens; the second may still be starting, so ask until both answered.
      const pids = new Set<string>();
      const deadline = Date.now() + 15_000;
      for (let i = 0; pids.size < 2 || i < 12; i++) {
        const res = await cgiFcgiRequest({ connect: app.address, params: params('/pid') });
        assert.equal(res.status, 200);
        pids.add(res.text().trim());
        if (Date.now() > deadline) break;
      }
      assert.equal(pids.size, 2, `answers came from ${[...pids]}`);
      assert.ok(!pids.has(String(app.pid)), 'the primary serves nothing itself');
      assert.equal(processGroupMembers(app.pid).length, 3, 'primary and two workers');
      // A request in flight when the primary is told to stop is finished by its worker.
      const slow = cgiFcgiRequest({ connect: app.address, params: params('/slow?ms=800&tag=workers') });
      await eventually(() => app.output(), /kitchen: slow started workers/);
      const status = await app.signal('SIGTERM');
      const res = await slow;
      assert.equal(res.status, 200);
      assert.equal(res.text(), 'slow done after 800 ms\n');
      assert.deepEqual(status, { code: 0, signal: null });
      assert.deepEqual(await groupGone(app.pid), [], 'the workers are gone too');
    } finally {
      await app.stop();
    }
  });

  test('--socket-mode sets the mode of the socket file; 0660 by default', async (t) => {
    const dir = await makeTempDir('fcgi-mode-');
    try {
      for (const [flag, mode] of [['0666', 0o666], [null, 0o660], ['0600', 0o600]] as const) {
        const socketPath = path.join(dir.path, `mode-${flag ?? 'default'}.sock`);
        const app = await startResponder({ app: kitchen, listen: 'unix', socketPath, socketMode: flag });
        try {
          assert.equal((fs.statSync(socketPath).mode & 0o777).toString(8), mode.toString(8), `--socket-mode ${flag}`);
          if (requirePeer(t, 'cgi-fcgi')) assert.equal((await cgiFcgiRequest({ connect: socketPath, params: params('/hello') })).text(), 'hello\n');
        } finally {
          await app.stop();
        }
      }
    } finally {
      await dir.cleanup();
    }
  });

  test('a stale socket file is replaced, and one in use is not stolen', async (t: TestContext) => {
    if (!requirePeer(t, 'cgi-fcgi')) return;
    const dir = await makeTempDir('fcgi-stale-');
    const socketPath = path.join(dir.path, 'app.sock');
    try {
      // A responder killed with SIGKILL leaves its socket file behind.
      const first = await startResponder({ app: kitchen, listen: 'unix', socketPath });
      await stop(first.process, 'SIGKILL');
      assert.ok(fs.lstatSync(socketPath).isSocket(), 'the stale socket file is still there');
      const second = await startResponder({ app: kitchen, listen: 'unix', socketPath });
      try {
        assert.equal((await cgiFcgiRequest({ connect: socketPath, params: params('/pid') })).text(), `${second.pid}\n`);
        // A third one must not take the path from the live second one.
        const { command, args } = fcgiCommand(['--listen', socketPath, '--app', kitchen]);
        const third = spawnSync(command, args, { cwd: repoRoot, stdio: ['ignore', 'pipe', 'pipe'], encoding: 'utf8', timeout: 20_000 });
        assert.notEqual(third.status, 0);
        assert.match(third.stderr, /in use by a running server/);
        assert.equal((await cgiFcgiRequest({ connect: socketPath, params: params('/pid') })).text(), `${second.pid}\n`);
      } finally {
        await second.stop();
      }
    } finally {
      await dir.cleanup();
    }
  });
});

describe('graceful stop', () => {
  for (const signal of ['SIGTERM', 'SIGQUIT'] as const) {
    test(`${signal}: the in-flight request completes, new connections are refused, exit 0`, async (t) => {
      if (!requirePeer(t, 'cgi-fcgi')) return;
      const app = await startResponder({ app: kitchen, listen: 'tcp' });
      try {
        let finishedAt = 0;
        const slow = cgiFcgiRequest({ connect: app.address, params: params('/slow?ms=1000') }).then((res) => {
          finishedAt = performance.now();
          return res;
        });
        slow.catch(() => {}); // awaited below; a failure meanwhile must not hide the assertion that failed first
        // Wait until the app is working on it: a request still in the listen backlog would be refused too.
        const deadline0 = Date.now() + 10_000;
        while ((await cgiFcgiRequest({ connect: app.address, params: params('/inflight') })).text() !== '1\n') {
          assert.ok(Date.now() < deadline0, 'the slow request never reached the app');
          await sleep(10);
        }
        const exited = app.signal(signal);
        let refused = '';
        const deadline = Date.now() + 600;
        // A connect that lands in the backlog as the listener closes is reset (ECONNRESET): not served,
        // but not yet the closed listener either, so keep trying until the kernel refuses outright.
        while (Date.now() < deadline && (refused = await tryConnect(app.port!)) !== 'ECONNREFUSED') await sleep(20);
        const refusedAt = performance.now();
        assert.equal(refused, 'ECONNREFUSED', 'the listener closed on the signal');
        const res = await slow;
        assert.ok(refusedAt < finishedAt, 'connections were refused while the slow request was still running');
        assert.equal(res.status, 200);
        assert.equal(res.text(), 'slow done after 1000 ms\n');
        assert.deepEqual(await exited, { code: 0, signal: null });
        assert.match(app.output(), /"GET \/slow\?ms=1000 HTTP\/1\.1" 200 /);
      } finally {
        await app.stop();
      }
    });
  }
});
