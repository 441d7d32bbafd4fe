// `serve` running fcgi/ apps itself: started on first use with a socket handed as fd 0, spread over --fcgi-procs processes, restarted after kill -9, stopped gracefully; and `npm start` serving the same handler both ways.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { startServe, type RunningServer } from '../src/commands/serve.ts';
import { serveNodeFlags } from '../src/node-flags.ts';
import { childPids, makeTempDir, startProcess, stop, type TempDir } from '../src/peers/index.ts';
import { waitFor } from './cgi-fixture.ts';
import { logged } from './fixtures/log.ts';

const repoRoot = path.resolve(import.meta.dirname, '..');

function cmdline(pid: number): string {
  try {
    return fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').replace(/\0/g, ' ');
  } catch {
    return '';
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** The raw bytes of the answer to a GET, read until the server closes the connection. */
function rawGet(port: number, target: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, '127.0.0.1');
    const chunks: Buffer[] = [];
    socket.on('data', (c) => chunks.push(c));
    socket.on('error', reject);
    socket.on('close', () => resolve(Buffer.concat(chunks).toString('latin1')));
    socket.write(`GET ${target} HTTP/1.1\r\nHost: x\r\n\r\n`);
  });
}

let apps: TempDir;
before(async () => {
  // An fcgi/ directory of its own: the test app, and one that cannot start.
  apps = await makeTempDir('fcgi-serve-apps-');
  fs.writeFileSync(path.join(apps.path, 'upstream.ts'), `export { default } from ${JSON.stringify(path.join(repoRoot, 'test/fixtures/apps/client-upstream.ts'))};\n`);
  fs.writeFileSync(path.join(apps.path, 'broken.ts'), `throw new Error('this app is broken on purpose');\n`);
  // Exits (a crash) on /crash; answers its pid otherwise.
  fs.writeFileSync(path.join(apps.path, 'crashy.ts'), `export default { fetch(request: Request) { if (request.url.endsWith('/crash')) process.exit(3); return new Response(String(process.pid)); } };\n`);
});
after(async () => {
  await apps?.cleanup();
});

async function serve(procs: number): Promise<RunningServer> {
  return startServe({ port: 0, host: '127.0.0.1', cgiDir: path.join(repoRoot, 'cgi-bin'), timeout: 10, maxBody: 64 * 1024 * 1024, maxScripts: 8, fcgiDir: apps.path, fcgiProcs: procs });
}

/** The base URL a started `serve` prints (within 20 s). */
async function servedUrl(proc: { stdout(): string; outputTail(): string }): Promise<string> {
  const deadline = Date.now() + 20_000;
  let base: string | undefined;
  while (!(base = /at (http:\/\/[^/]+)\/cgi-bin\//.exec(proc.stdout())?.[1])) {
    assert.ok(Date.now() < deadline, `serve did not start: ${proc.outputTail()}`);
    await sleep(50);
  }
  return base;
}

describe('npm start', () => {
  test('serves /cgi-bin/hello.ts (a process per request) and /fcgi/hello (persistent) with the same body; the app starts on first use and stops with serve', async () => {
    // What `npm start` runs, from the repository root (on a free port instead of 8080).
    const [program, ...startArgs] = (JSON.parse(fs.readFileSync(path.join(repoRoot, 'package.json'), 'utf8')) as { scripts: { start: string } }).scripts.start.split(' ');
    assert.equal(program, 'node');
    for (const flag of serveNodeFlags) assert.ok(startArgs.includes(flag), `the start script passes ${flag}, as the benchmarks do`);
    const proc = await startProcess({ name: 'cgi-runner serve', command: process.execPath, args: [...startArgs, '--port', '0'], cwd: repoRoot });
    try {
      const base = await servedUrl(proc);
      assert.match(proc.stdout(), /serving the apps of .*\/fcgi at http:\/\/.*\/fcgi\/NAME/);
      const appProcesses = () => childPids(proc.pid).filter((pid) => / fcgi --app .*fcgi\/hello\.ts/.test(cmdline(pid)));
      assert.deepEqual(appProcesses(), [], 'no app process before the first request');

      const cgi = await fetch(`${base}/cgi-bin/hello.ts`);
      const fcgi = await fetch(`${base}/fcgi/hello`);
      assert.equal(cgi.status, 200);
      assert.equal(fcgi.status, 200);
      assert.equal(cgi.headers.get('content-type'), fcgi.headers.get('content-type'));
      const [cgiBody, fcgiBody] = [await cgi.text(), await fcgi.text()];
      assert.equal(cgiBody, 'hello\n');
      assert.equal(fcgiBody, cgiBody);
      const [app] = appProcesses();
      assert.ok(app, 'the first /fcgi/hello request started the app process');
      // The same process answers again: it is persistent.
      assert.equal(await (await fetch(`${base}/fcgi/hello`)).text(), 'hello\n');
      assert.deepEqual(appProcesses(), [app]);

      process.kill(proc.pid, 'SIGINT');
      // The launcher does not hold the event loop for its children: something must while waiting.
      const keepAlive = setInterval(() => {}, 1000);
      const status = await proc.exited.finally(() => clearInterval(keepAlive));
      assert.equal(status.code, 0, proc.outputTail());
      assert.equal(alive(app), false, 'the app process stopped with serve');
      assert.match(proc.stderr(), /fcgi\/hello\[\d+\]: .*fcgi: SIGTERM received, finishing in-flight requests/);
    } finally {
      await stop(proc, 'SIGKILL', 1000);
    }
  });

  test('the package bin, run as a program, starts node with the same flags as `npm start` and serves', async () => {
    // Run through its shebang, as npm's bin link runs it: not as an argument to node.
    const proc = await startProcess({ name: 'cgi-runner serve (bin)', command: path.join(repoRoot, 'bin/cgi-runner.js'), args: ['serve', '--port', '0'], cwd: repoRoot });
    try {
      const base = await servedUrl(proc);
      assert.equal(await (await fetch(`${base}/cgi-bin/hello.sh`)).text(), 'hello\n');
      const args = cmdline(proc.pid).split(' ');
      assert.match(path.basename(args[0]!), /^node/, cmdline(proc.pid));
      for (const flag of serveNodeFlags) assert.ok(args.includes(flag), `the bin's node runs with ${flag}: ${cmdline(proc.pid)}`);
    } finally {
      await stop(proc, 'SIGTERM', 5000);
    }
  });
});

/**
 * The pid the app at `url` answers with once a process other than `pid` serves it (while the
 * replacement starts, requests wait for it or get 503); `pid` again if none does within 20 s.
 */
async function replacementPid(url: string, pid: number): Promise<number> {
  const deadline = Date.now() + 20_000;
  while (Date.now() < deadline) {
    const r = await fetch(url);
    const next = r.status === 200 ? Number(await r.text()) : pid;
    if (next !== pid) return next;
    await sleep(50);
  }
  return pid;
}

describe('the process manager', () => {
  test('--fcgi-procs 2: both start on first use and share the requests; path and query reach the app; a body streams through', async () => {
    const running = await serve(2);
    try {
      const base = `http://127.0.0.1:${running.port}`;
      assert.deepEqual(running.fastcgi.manager.pids(), {});
      const env = (await (await fetch(`${base}/fcgi/upstream/more/env?x=1&y=%20`)).json()) as { params: Record<string, string>; url: string };
      assert.equal(env.params.SCRIPT_NAME, '/fcgi/upstream');
      assert.equal(env.params.PATH_INFO, '/more/env');
      assert.equal(env.params.QUERY_STRING, 'x=1&y=%20');
      assert.equal(env.params.SCRIPT_FILENAME, path.join(apps.path, 'upstream.ts'));
      assert.equal(env.url, `${base}/fcgi/upstream/more/env?x=1&y=%20`);
      // The first request needed one process; the second may still be loading the app.
      const deadline = Date.now() + 20_000;
      while (running.fastcgi.manager.pids()['fcgi/upstream']!.length < 2) {
        assert.ok(Date.now() < deadline, 'the second process never became ready');
        await sleep(50);
      }
      const pids = running.fastcgi.manager.pids()['fcgi/upstream']!;

      const answers = await Promise.all(Array.from({ length: 8 }, async () => Number(await (await fetch(`${base}/fcgi/upstream/slowpid?ms=150`)).text())));
      assert.deepEqual([...new Set(answers)].sort(), [...pids].sort(), 'the least busy process takes each request');

      const upload = Buffer.alloc(3 * 1024 * 1024, 7);
      const echo = await fetch(`${base}/fcgi/upstream/echo`, { method: 'POST', body: upload });
      assert.deepEqual(await echo.json(), { size: upload.length, sha256: createHash('sha256').update(upload).digest('hex') });
      assert.equal((await fetch(`${base}/fcgi/nothing-here`)).status, 404);
      assert.equal((await fetch(`${base}/fcgi/upstream/../../cgi-bin/x`)).status, 404);
    } finally {
      await running.stop(5000);
    }
  });

  test('kill -9 of the app process during load: requests in flight get 502 (a GET as well as a POST), every later request succeeds', async () => {
    const running = await serve(1);
    try {
      const base = `http://127.0.0.1:${running.port}`;
      const first = Number(await (await fetch(`${base}/fcgi/upstream/pid`)).text());
      const results: Array<{ start: number; end: number; status: number; pid: number }> = [];
      let killedAt = 0;
      // When serve saw the death: a request sent between the kill and then may still have gone to
      // the dead process (it was in flight too); every request after it must succeed.
      let noticedAt = 0;
      let inFlight: { post: { status: number; text: string }; get: { status: number; text: string } } | undefined;
      const { lines } = await logged(async (seen) => {
        // Until the restarted process has served 20 requests (its start takes long on a busy machine).
        const deadline = performance.now() + 40_000;
        let served = 0;
        const worker = async () => {
          while (served < 20 && performance.now() < deadline) {
            const start = performance.now();
            const response = await fetch(`${base}/fcgi/upstream/slowpid?ms=20`);
            const text = await response.text();
            const pid = response.status === 200 ? Number(text) : 0;
            if (noticedAt && start >= noticedAt && pid && pid !== first) served++;
            results.push({ start, end: performance.now(), status: response.status, pid });
          }
        };
        const load = Promise.all(Array.from({ length: 8 }, worker));
        // Under load: 20 requests answered, 8 more in flight.
        while (results.length < 20) await sleep(10);
        // Surely in flight at the kill (the app said both arrived): a POST and a GET. Neither is sent
        // again (the GET might be what crashed the process): both get 502.
        const post = fetch(`${base}/fcgi/upstream/slowpid?ms=5000&tag=post`, { method: 'POST', body: 'gone with the process' }).then(async (r) => ({ status: r.status, text: await r.text() }));
        const get = fetch(`${base}/fcgi/upstream/slowpid?ms=5000&tag=get`).then(async (r) => ({ status: r.status, text: await r.text() }));
        await waitFor('both tagged requests to reach the app', () => (['post', 'get'].every((tag) => seen.some((l) => l.includes(`upstream-app: started ${tag}`))) ? true : undefined), 10_000);
        killedAt = performance.now();
        process.kill(first, 'SIGKILL');
        await waitFor('serve to see the process die', () => (seen.some((l) => l.includes('process killed by SIGKILL')) ? true : undefined), 10_000);
        noticedAt = performance.now();
        await load;
        inFlight = { post: await post, get: await get };
      });
      assert.equal(inFlight!.post.status, 502, 'a POST in flight when its process died');
      assert.equal(inFlight!.get.status, 502, 'a GET in flight when its process died');
      const before = results.filter((r) => r.end < killedAt);
      const during = results.filter((r) => r.start < noticedAt && r.end >= killedAt);
      const later = results.filter((r) => r.start >= noticedAt);
      assert.ok(before.length >= 20, `${before.length} requests before the kill`);
      assert.deepEqual(before.filter((r) => r.status !== 200 || r.pid !== first), []);
      assert.ok(during.every((r) => r.status === 200 || r.status === 502), JSON.stringify(during));
      assert.ok(later.length >= 20, `${later.length} requests after the kill`);
      assert.deepEqual(later.filter((r) => r.status !== 200), [], 'every request after serve saw the death succeeded');
      const restarted = running.fastcgi.manager.pids()['fcgi/upstream']!;
      assert.equal(restarted.length, 1);
      assert.notEqual(restarted[0], first);
      assert.ok(later.every((r) => r.pid === restarted[0]));
      assert.ok(lines.some((l) => l.includes('fastcgi: fcgi/upstream: process killed by SIGKILL; restarting in 100 ms')), lines.join('\n'));
    } finally {
      await running.stop(5000);
    }
  });

  test('a client that disconnects: the app sees its request aborted, and the next request is served', async () => {
    const running = await serve(1);
    try {
      const base = `http://127.0.0.1:${running.port}`;
      assert.equal((await fetch(`${base}/fcgi/upstream/pid`)).status, 200);
      const seenAbort = (lines: readonly string[]) => lines.some((l) => l.includes('upstream-app: aborted wait left'));
      const { lines } = await logged(async (lines) => {
        const gone = new AbortController();
        const pending = fetch(`${base}/fcgi/upstream/wait?tag=left`, { signal: gone.signal }).catch((e: Error) => e);
        // Dropped once the request has reached the app.
        await waitFor('the request to reach the app', () => (lines.some((l) => l.includes('upstream-app: started wait left')) ? true : undefined));
        gone.abort();
        assert.ok((await pending) instanceof Error);
        const deadline = Date.now() + 5000;
        while (Date.now() < deadline && !seenAbort(lines)) await sleep(20);
      });
      assert.ok(seenAbort(lines), `the app saw the abort:\n${lines.join('\n')}`);
      assert.equal(await (await fetch(`${base}/fcgi/upstream/id?n=7`)).text(), 'id 7\n');
    } finally {
      await running.stop(2000);
    }
  });

  test('an app that sends less than its Content-Length: the client gets the status and what was sent, then the connection closes', async () => {
    const running = await serve(1);
    try {
      const r = await rawGet(running.port, '/fcgi/upstream/short');
      assert.match(r, /^HTTP\/1\.1 200 OK\r\n/);
      assert.match(r, /\r\ncontent-length: 10\r\n/i);
      assert.ok(r.endsWith('\r\n\r\nshor'), JSON.stringify(r));
    } finally {
      await running.stop(2000);
    }
  });

  test('an app that keeps crashing is restarted after a delay that doubles each time', async () => {
    const running = await serve(1);
    try {
      const base = `http://127.0.0.1:${running.port}/fcgi/crashy`;
      const { lines } = await logged(async (seen) => {
        for (let i = 0; i < 3; i++) {
          const pid = Number(await (await fetch(base)).text());
          assert.equal((await fetch(`${base}/crash`)).status, 502, 'the request that crashed it');
          assert.notEqual(await replacementPid(base, pid), pid, `restart ${i + 1}: ${seen.join('\n')}`);
        }
      });
      const delays = lines.map((l) => /fcgi\/crashy: process exit status 3; restarting in (\d+) ms/.exec(l)?.[1]).filter(Boolean);
      assert.deepEqual(delays, ['100', '200', '400'], lines.join('\n'));
    } finally {
      await running.stop(5000);
    }
  });

  test('its socket directory removed (a tmp cleaner), an app that crashes is restarted all the same', async () => {
    const running = await serve(1);
    try {
      const base = `http://127.0.0.1:${running.port}/fcgi/crashy`;
      const pid = Number(await (await fetch(base)).text());
      fs.rmSync(running.fastcgi.manager.socketDir(), { recursive: true, force: true });
      assert.equal((await fetch(`${base}/crash`)).status, 502, 'the request that crashed it');
      assert.notEqual(await replacementPid(base, pid), pid, 'a replacement answers');
    } finally {
      await running.stop(5000);
    }
  });

  test('an app that fails to start: 503 with the reason', async () => {
    const running = await serve(1);
    try {
      const { result, lines } = await logged(async () => {
        const response = await fetch(`http://127.0.0.1:${running.port}/fcgi/broken`);
        return { status: response.status, body: await response.text() };
      });
      assert.equal(result.status, 503);
      assert.match(result.body, /fcgi\/broken: unavailable: the process ended before it was ready \(exit status 1\): .*this app is broken on purpose/);
      assert.ok(lines.some((l) => /fastcgi: fcgi\/broken: unavailable: .*broken on purpose/.test(l)), lines.join('\n'));
      // Right after, within the backoff, the answer is the same without another attempt.
      const again = await fetch(`http://127.0.0.1:${running.port}/fcgi/broken`);
      assert.equal(again.status, 503);
      assert.match(await again.text(), /broken on purpose/);
    } finally {
      await running.stop(5000);
    }
  });

  test('stopping serve lets in-flight requests finish, then stops the app processes', async () => {
    const running = await serve(1);
    const base = `http://127.0.0.1:${running.port}`;
    const pid = Number(await (await fetch(`${base}/fcgi/upstream/pid`)).text());
    const slow = fetch(`${base}/fcgi/upstream/slowpid?ms=800`).then(async (r) => ({ status: r.status, body: await r.text() }));
    await sleep(200);
    const t0 = Date.now();
    await running.stop(5000);
    assert.deepEqual(await slow, { status: 200, body: `${pid}\n` });
    assert.ok(Date.now() - t0 >= 500, 'stop waited for the request in flight');
    assert.equal(alive(pid), false, 'the app process is gone');
    assert.deepEqual(running.fastcgi.manager.pids(), { 'fcgi/upstream': [] });
  });
});
