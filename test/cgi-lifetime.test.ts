// How long scripts live: output streams as written, the timeout and a client that leaves kill the whole process group, the concurrency cap queues then refuses, nothing is left behind, and SIGTERM drains the server.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { loadSpawnAddon } from '../src/cgi/native-spawner.ts';
import { processGroupMembers } from '../src/peers/index.ts';
import { eventually } from './fixtures/eventually.ts';
import { assertGroupGone, captureLog, get, startCgiServer, waitFor, writeScripts, type CgiServer } from './cgi-fixture.ts';

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const sh = (body: string) => `#!/bin/sh\n${body}\n`;

// Each records its pid (its process group) in ROOT/pids/QUERY_STRING, then starts a member of its
// group that ignores SIGTERM, so only the SIGKILL that follows can end it.
const scripts = {
  'stream.sh': sh(`printf 'Content-Type: text/plain\\n\\nfirst\\n'; sleep 1; printf 'second\\n'`),
  'hang.sh': sh(`echo $$ > "$DOCUMENT_ROOT/pids/$QUERY_STRING"; trap '' TERM; sleep 60 & sleep 60`),
  'hang-after-output.sh': sh(`printf 'Content-Type: text/plain\\n\\npartial\\n'; echo $$ > "$DOCUMENT_ROOT/pids/$QUERY_STRING"; sleep 60 & sleep 60`),
  // Answer, then linger past the timeout: with a local redirect, and with stdout closed.
  'redirect-then-hang.sh': sh(`printf 'Location: /cgi-bin/slow.sh?target\\n\\n'; echo $$ > "$DOCUMENT_ROOT/pids/$QUERY_STRING"; sleep 60`),
  'answer-then-hang.sh': sh(`printf 'Content-Type: text/plain\\n\\nall\\n'; exec >&-; echo $$ > "$DOCUMENT_ROOT/pids/$QUERY_STRING"; sleep 60`),
  'background.sh': sh(`echo $$ > "$DOCUMENT_ROOT/pids/$QUERY_STRING"; sleep 60 >/dev/null 2>&1 & printf 'Content-Type: text/plain\\n\\ndone\\n'`),
  'slow.sh': sh(`sleep 0.2; printf 'Content-Type: text/plain\\n\\n%s\\n' "$QUERY_STRING"`),
  'big.sh': sh(`printf 'Content-Type: application/octet-stream\\n\\n'; exec head -c "$QUERY_STRING" /dev/zero`),
};

function readPid(server: CgiServer, name: string): Promise<number> {
  const file = path.join(path.dirname(server.dir), 'pids', name);
  return waitFor(`pid file ${name}`, () => {
    const text = fs.existsSync(file) ? fs.readFileSync(file, 'utf8').trim() : '';
    return text ? Number(text) : undefined;
  });
}

function zombiesOf(parent: number): number[] {
  const zombies: number[] = [];
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = fs.readFileSync(`/proc/${entry}/stat`, 'utf8');
      const [state, ppid] = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      if (state === 'Z' && Number(ppid) === parent) zombies.push(Number(entry));
    } catch {
      // gone meanwhile
    }
  }
  return zombies;
}

function rss(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) * 1024 : 0;
}

describe('script lifetime', () => {
  let server: CgiServer;
  let port: number;
  // The timeout tests need a short timeout; streaming a large response needs a longer one.
  let patient: CgiServer;
  before(async () => {
    [server, patient] = await Promise.all([
      startCgiServer(scripts, { timeout: 1, killGrace: 0.3, maxScripts: 8 }),
      startCgiServer(scripts, { timeout: 30 }),
    ]);
    port = server.port;
    fs.mkdirSync(path.join(path.dirname(server.dir), 'pids'));
  });
  after(() => Promise.all([server?.close(), patient?.close()]));

  test('output reaches the client as the script writes it', async () => {
    const started = performance.now();
    const times: number[] = [];
    const body = await new Promise<string>((resolve, reject) => {
      const socket = net.connect(patient.port, '127.0.0.1');
      let text = '';
      socket.on('data', (d) => {
        text += d.toString();
        times.push(performance.now() - started);
      });
      socket.on('close', () => resolve(text));
      socket.on('error', reject);
      socket.write('GET /cgi-bin/stream.sh HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
    });
    assert.match(body, /first\n[\s\S]*second\n/);
    const firstByte = times[0]!;
    assert.ok(firstByte < 600, `the first part came after ${firstByte.toFixed(0)} ms`);
    assert.ok(times.at(-1)! - firstByte >= 800, 'the second part came a second later');
  });

  test('a 1 GiB response streams through with bounded memory', async (t) => {
    const size = 1024 * 1024 * 1024;
    const started = performance.now();
    const helpers = patient.host.spawnerPids;
    const before = process.memoryUsage().rss;
    let peak = 0;
    let helperPeak = 0;
    const received = await new Promise<number>((resolve, reject) => {
      const socket = net.connect(patient.port, '127.0.0.1');
      let bytes = 0;
      const sampler = setInterval(() => {
        peak = Math.max(peak, process.memoryUsage().rss - before);
        for (const helper of helpers) helperPeak = Math.max(helperPeak, rss(helper));
      }, 20);
      socket.on('data', (d) => (bytes += d.length));
      socket.on('close', () => {
        clearInterval(sampler);
        resolve(bytes);
      });
      socket.on('error', reject);
      socket.write(`GET /cgi-bin/big.sh?${size} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`);
    });
    t.diagnostic(`1 GiB in ${((performance.now() - started) / 1000).toFixed(1)} s; the runner grew by at most ${(peak / 1048576).toFixed(0)} MiB, a helper reached ${(helperPeak / 1048576).toFixed(0)} MiB`);
    assert.ok(received > size, `received ${received} bytes`);
    assert.ok(peak < 96 * 1024 * 1024, `the runner grew by ${(peak / 1048576).toFixed(0)} MiB`);
    assert.ok(helperPeak < 64 * 1024 * 1024, `a helper reached ${(helperPeak / 1048576).toFixed(0)} MiB`);
  });

  test('timeout before any output: 504, and the whole process group is killed', async () => {
    const started = Date.now();
    const pending = get(port, '/cgi-bin/hang.sh?timeout1');
    const pgid = await readPid(server, 'timeout1');
    assert.ok(processGroupMembers(pgid).length >= 2, 'the script and its background child run');
    const r = await pending;
    assert.equal(r.status, 504);
    assert.ok(Date.now() - started >= 900, 'not before the timeout');
    // TERM is ignored by both: only the KILL after the grace period ends them.
    await assertGroupGone(pgid);
  });

  test('timeout after some output: the response is cut, the log says why, and the group killed', async () => {
    const log = captureLog();
    try {
      const pending = get(port, '/cgi-bin/hang-after-output.sh?timeout2');
      const pgid = await readPid(server, 'timeout2');
      const r = await pending;
      assert.equal(r.status, 200);
      assert.equal(r.body.toString(), 'partial\n');
      assert.equal(r.complete, false, 'the chunked body has no last chunk');
      await eventually(() => log.text(), /cgi: the script ran longer than 1 s; its response was cut short \[\/cgi-bin\/hang-after-output\.sh\]/);
      await assertGroupGone(pgid);
    } finally {
      log.restore();
    }
  });

  test('timeout after a whole answer or a local redirect: nothing is cut, and the log says what the kill did', async () => {
    const log = captureLog();
    try {
      const complete = await get(port, '/cgi-bin/answer-then-hang.sh?late1');
      assert.equal(complete.status, 200);
      assert.equal(complete.body.toString(), 'all\n');
      assert.equal(complete.complete, true);
      const redirected = await get(port, '/cgi-bin/redirect-then-hang.sh?late2');
      assert.equal(redirected.status, 200);
      assert.equal(redirected.body.toString(), 'target\n', 'the target of the local redirect answered');
      await eventually(() => log.text(), /cgi: the script ran longer than 1 s after its response was complete; it was killed \[\/cgi-bin\/answer-then-hang\.sh\]/);
      // It never closed its stdout: what it answered was a redirect, which has been followed.
      await eventually(() => log.text(), /cgi: the script ran longer than 1 s after its local redirect was followed; it was killed \[\/cgi-bin\/redirect-then-hang\.sh\]/);
      assert.doesNotMatch(log.text(), /then-hang\.sh[^\n]*cut short|cut short[^\n]*then-hang\.sh/);
      await assertGroupGone(await readPid(server, 'late1'));
      await assertGroupGone(await readPid(server, 'late2'));
    } finally {
      log.restore();
    }
  });

  test('a client that disconnects gets its script killed, group and all', async () => {
    const socket = net.connect(port, '127.0.0.1');
    socket.on('error', () => {});
    socket.write('GET /cgi-bin/hang.sh?disconnect HTTP/1.1\r\nHost: x\r\n\r\n');
    const pgid = await readPid(server, 'disconnect');
    const left = Date.now();
    socket.destroy();
    await assertGroupGone(pgid, 3000);
    assert.ok(Date.now() - left < 900, 'killed when the client left, not at the timeout');
  });

  test('background processes left by a finished script are killed', async () => {
    const r = await get(port, '/cgi-bin/background.sh?background');
    assert.equal(r.body.toString(), 'done\n');
    const pgid = await readPid(server, 'background');
    await assertGroupGone(pgid, 3000);
  });

  test('32 concurrent requests all get their own answer', async () => {
    const responses = await Promise.all(Array.from({ length: 32 }, (_, i) => get(port, `/cgi-bin/slow.sh?n${i}`)));
    responses.forEach((r, i) => {
      assert.equal(r.status, 200);
      assert.equal(r.body.toString(), `n${i}\n`);
    });
  });

  test('no zombies are left', async () => {
    await Promise.all(Array.from({ length: 16 }, () => get(port, '/cgi-bin/slow.sh?z')));
    await sleep(100);
    for (const parent of [...server.host.spawnerPids, process.pid]) assert.deepEqual(zombiesOf(parent), [], `zombies of ${parent}`);
  });
});

describe('a script killed after its response started', () => {
  let server: CgiServer;
  before(async () => {
    // It ignores SIGTERM and writes on until the SIGKILL: more than a pipe holds.
    server = await startCgiServer(
      { 'stubborn.sh': sh(`printf 'Content-Type: text/plain\\n\\nstart\\n'; trap '' TERM; while :; do printf '%01024d\\n' 0; done`), 'ok.sh': sh(`printf 'Content-Type: text/plain\\n\\nok\\n'`) },
      { maxScripts: 1, timeout: 1, killGrace: 1 },
    );
  });
  after(() => server?.close());

  test('has its output drained until the SIGKILL, so its slot is free right after', async () => {
    const started = Date.now();
    // A client that reads nothing: the runner alone decides how much of the output it takes.
    const socket = net.connect(server.port, '127.0.0.1');
    socket.on('error', () => {});
    socket.write('GET /cgi-bin/stubborn.sh HTTP/1.1\r\nHost: x\r\n\r\n');
    socket.pause();
    await waitFor('the script to run', () => (server.host.running === 1 ? true : undefined));
    await waitFor('its run to end', () => (server.host.running === 0 ? true : undefined), 6000);
    const ended = Date.now() - started;
    socket.destroy();
    // TERM at 1 s (the timeout), KILL at 2 s. A run whose output was left paused after the TERM
    // would end only when the runner gives up on its stdout, a grace period later (3 s).
    assert.ok(ended >= 1900 && ended < 2700, `the run ended ${ended} ms after the request`);
    assert.equal((await get(server.port, '/cgi-bin/ok.sh')).status, 200, 'the slot is free');
  });
});

describe('the concurrency cap', () => {
  let server: CgiServer;
  before(async () => {
    server = await startCgiServer({ 'slow.sh': sh(`sleep 0.4; printf 'Content-Type: text/plain\\n\\n%s\\n' "$QUERY_STRING"`) }, { maxScripts: 1 });
  });
  after(() => server?.close());

  test('--max-scripts: requests beyond it wait in a bounded queue, then get 503', async () => {
    assert.equal(server.host.queueLimit, 8);
    const first = get(server.port, '/cgi-bin/slow.sh?first');
    await waitFor('the first script to run', () => (server.host.running === 1 ? true : undefined));
    const queued = Array.from({ length: 8 }, (_, i) => get(server.port, `/cgi-bin/slow.sh?q${i}`));
    await sleep(100);
    const started = Date.now();
    const refused = await get(server.port, '/cgi-bin/slow.sh?refused');
    assert.equal(refused.status, 503);
    assert.ok(Date.now() - started < 300, 'refused at once when the queue is full');
    assert.equal((await first).body.toString(), 'first\n');
    const results = await Promise.all(queued);
    results.forEach((r, i) => assert.equal(r.body.toString(), `q${i}\n`));
  });
});

describe('the queue timeout', () => {
  test('a request that waited --timeout for a script slot gets 503', async () => {
    // The running script ignores SIGTERM, so it holds the only slot past its own timeout until the
    // SIGKILL that follows: the queued request's wait (also --timeout) ends first.
    const server = await startCgiServer({ 'stubborn.sh': sh(`trap '' TERM; sleep 5`), 'quick.sh': sh(`printf 'Content-Type: text/plain\\n\\nquick\\n'`) }, { maxScripts: 1, timeout: 1, killGrace: 1 });
    try {
      const first = get(server.port, '/cgi-bin/stubborn.sh');
      await waitFor('the first script to run', () => (server.host.running === 1 ? true : undefined));
      const queuedAt = Date.now();
      const queued = await get(server.port, '/cgi-bin/quick.sh');
      const waited = Date.now() - queuedAt;
      assert.equal(queued.status, 503);
      assert.ok(waited >= 900, `answered after ${waited} ms: it waited its --timeout in the queue`);
      assert.equal((await first).status, 504);
      // The slot is free again once the stubborn script is gone.
      await waitFor('the slot to be free', () => (server.host.running === 0 ? true : undefined), 5000);
      assert.equal((await get(server.port, '/cgi-bin/quick.sh')).body.toString(), 'quick\n');
    } finally {
      await server.close();
    }
  });
});

const noAddon = loadSpawnAddon();

describe('serve killed by SIGKILL', { skip: noAddon instanceof Error && !process.env.CI ? noAddon.message : false }, () => {
  test('takes its running scripts with it, the first and one started while it runs', async () => {
    const root = fs.mkdtempSync(path.join(os.tmpdir(), 'cgi-test-'));
    const dir = path.join(root, 'cgi-bin');
    fs.mkdirSync(path.join(root, 'pids'), { recursive: true });
    // It would run for a minute, and SIGKILL runs none of the runner's clean-up.
    writeScripts(dir, { 'long.sh': sh(`echo $$ > "$DOCUMENT_ROOT/pids/$QUERY_STRING"; exec sleep 60`) });
    // The in-process spawner (the default) is the one that ties a script to the runner's life.
    const child = spawn(process.execPath, ['--import', 'tsx', 'src/cli.ts', 'serve', '--port', '0', '--cgi-dir', dir], {
      cwd: repo,
      env: { ...process.env, CGI_RUNNER_SPAWNER: 'native' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const scripts: number[] = [];
    try {
      let out = '';
      let err = '';
      child.stdout.on('data', (d) => (out += d));
      child.stderr.on('data', (d) => (err += d));
      const url = await waitFor('the URL line', () => /at (http:\/\/\S+)/.exec(out)?.[1], 20_000);
      await waitFor('the spawner line', () => /clone and execve/.test(err) || undefined);
      const port = Number(new URL(url).port);
      const pidOf = (name: string) => {
        const file = path.join(root, 'pids', name);
        return waitFor(`the script ${name}`, () => (fs.existsSync(file) && fs.readFileSync(file, 'utf8').trim() ? Number(fs.readFileSync(file, 'utf8')) : undefined));
      };
      // (Where the spawn waits for execve, not on x86-64 or arm64, the second, started while the
      // first runs, is spawned on a libuv worker thread rather than the event loop's.)
      const requests = [get(port, '/cgi-bin/long.sh?first').catch(() => undefined)];
      scripts.push(await pidOf('first'));
      requests.push(get(port, '/cgi-bin/long.sh?second').catch(() => undefined));
      scripts.push(await pidOf('second'));
      for (const pid of scripts) assert.deepEqual(processGroupMembers(pid), [pid]);
      const exited = new Promise((resolve) => child.once('exit', resolve));
      child.kill('SIGKILL');
      await exited;
      await Promise.all(requests);
      for (const pid of scripts) await assertGroupGone(pid, 3000);
    } finally {
      child.kill('SIGKILL');
      for (const pid of scripts) {
        try {
          process.kill(-pid, 'SIGKILL');
        } catch {
          // gone, as it should be
        }
      }
      fs.rmSync(root, { recursive: true, force: true });
    }
  });
});

describe('serve and SIGTERM', () => {
  test('in-flight requests finish, new ones are refused, stragglers are killed at the deadline', async () => {
    const root = fs.mkdtempSync(path.join(os.tmpdir(), 'cgi-test-'));
    const dir = path.join(root, 'cgi-bin');
    fs.mkdirSync(path.join(root, 'pids'), { recursive: true });
    writeScripts(dir, { 'slow.sh': scripts['slow.sh'], 'hang.sh': scripts['hang.sh'] });
    // The scripts' own timeout (30 s) is far off: what kills the straggler is the stop's deadline.
    const child = spawn(process.execPath, ['--import', 'tsx', 'src/cli.ts', 'serve', '--port', '0', '--cgi-dir', dir, '--timeout', '30', '--shutdown-timeout', '1'], {
      cwd: repo,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    try {
      let out = '';
      child.stdout.on('data', (d) => (out += d));
      child.stderr.on('data', () => {});
      const url = await waitFor('the URL line', () => /at (http:\/\/\S+)/.exec(out)?.[1], 20_000);
      const port = Number(new URL(url).port);
      assert.equal((await get(port, '/cgi-bin/slow.sh?warm')).status, 200);

      const slow = get(port, '/cgi-bin/slow.sh?inflight');
      const hanging = get(port, '/cgi-bin/hang.sh?straggler');
      const pgid = await waitFor('the straggler', () => {
        const f = path.join(root, 'pids', 'straggler');
        return fs.existsSync(f) && fs.readFileSync(f, 'utf8').trim() ? Number(fs.readFileSync(f, 'utf8')) : undefined;
      });
      const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
      const signalledAt = Date.now();
      child.kill('SIGTERM');
      const r = await slow;
      assert.equal(r.status, 200);
      assert.equal(r.body.toString(), 'inflight\n');
      // One combined-format access line per request, on stdout. It is written after the response,
      // so it may reach this pipe a moment after the body did.
      await eventually(() => out, /^127\.0\.0\.1 - - \[\d\d\/\w{3}\/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}\] "GET \/cgi-bin\/slow\.sh\?inflight HTTP\/1\.1" 200 9 "-" "-"$/m, 3000);
      await sleep(100);
      await assert.rejects(get(port, '/cgi-bin/slow.sh?late'), /ECONNREFUSED/);
      assert.notEqual((await hanging).status, 200);
      assert.equal(await exited, 0);
      await assertGroupGone(pgid, 3000);
      const stoppedAfter = Date.now() - signalledAt;
      assert.ok(stoppedAfter >= 900 && stoppedAfter < 8000, `stopped ${stoppedAfter} ms after SIGTERM: at the 1 s deadline, not the 30 s script timeout`);
    } finally {
      child.kill('SIGKILL');
      fs.rmSync(root, { recursive: true, force: true });
    }
  });
});
