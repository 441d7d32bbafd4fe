// Every way of starting scripts behaves the same: from the runner itself through the native addon (clone and execve), the spawner helper (python3, posix_spawn), and the last fallback (child_process.spawn from the runner).
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { PassThrough, type Readable } from 'node:stream';
import { after, before, describe, test, type TestContext } from 'node:test';
import { CgiHost, type CgiResponse } from '../src/cgi/host.ts';
import { loadSpawnAddon } from '../src/cgi/native-spawner.ts';
import { requirePeer } from '../src/peers/index.ts';
import { assertGroupGone, captureLog, ENV_SCRIPT, envOf, get, rawRequest, startCgiServer, waitFor, type CgiServer } from './cgi-fixture.ts';
import { eventually } from './fixtures/eventually.ts';

const sh = (body: string) => `#!/bin/sh\n${body}\n`;
const scripts = {
  'env.pl': ENV_SCRIPT,
  'count.pl': `#!/usr/bin/perl
binmode STDIN; my $n = 0; my $left = $ENV{CONTENT_LENGTH} || 0;
while ($left > 0) { my $got = read(STDIN, my $buf, 65536); last unless $got; $n += $got; $left -= $got; }
print "Content-Type: text/plain\\n\\nbytes=$n\\n";
`,
  'write-first.pl': `#!/usr/bin/perl
$| = 1; print "Content-Type: text/plain\\n\\n", "x" x (1 << 20);
my $n = 0; while (read(STDIN, my $buf, 65536)) { $n += length $buf } print "\\nread=$n\\n";
`,
  'hang.sh': sh(`echo $$ > "$DOCUMENT_ROOT/pids/$QUERY_STRING"; sleep 60 & sleep 60`),
  'stderr.sh': sh(`echo "to the log" >&2; printf 'Content-Type: text/plain\\n\\nok\\n'`),
  'whole.sh': sh(`printf 'Content-Type: text/plain\n\nhel'; printf 'lo\n'`),
  'wc.sh': sh(`printf 'Content-Type: text/plain\n\n'; wc -c | tr -d ' '`),
  'empty.sh': sh(`printf 'Content-Type: text/plain\n\n'`),
  'late.sh': sh(`printf 'Content-Type: text/plain\n\nfirst\n'; sleep 0.3; printf 'second\n'`),
  // 1 MiB after the head, far more than is held for a body nobody has asked for yet.
  'big.pl': `#!/usr/bin/perl
$| = 1; print "Content-Type: text/plain\n\n"; print "y" x 1024 for 1 .. 1024;
`,
  'head-then-hang.sh': sh(`printf 'Content-Type: text/plain\n\npartial\n'; sleep 60`),
  // A local redirect whose script goes on running after its answer, until the timeout kills it.
  'local-lingers.sh': sh(`printf 'Location: /cgi-bin/stderr.sh\n\n'; sleep 60`),
  'no-shebang.sh': 'printf "Content-Type: text/plain\\n\\nran anyway\\n"\n',
  'bad-interpreter.sh': '#!/nonexistent/interpreter\n',
  // A daemon's escape: a child in a session of its own, outside the script's process group.
  // It answers once the daemon has recorded its pid.
  'daemon.sh': sh(
    `f="$DOCUMENT_ROOT/pids/$QUERY_STRING"; (setsid sh -c "echo \\$\\$ > '$f'; exec sleep 30" >/dev/null 2>&1 &); while [ ! -s "$f" ]; do sleep 0.01; done; printf 'Content-Type: text/plain\\n\\ndone\\n'`,
  ),
};

/** The addon, or a skip (outside CI) that says how to build it. */
function nativeBuilt(t: TestContext): boolean {
  const addon = loadSpawnAddon();
  if (!(addon instanceof Error)) return true;
  if (process.env.CI) assert.fail(`${addon.message}: CI must build it (npm ci runs node-gyp)`);
  t.skip(`${addon.message} (needs a C compiler, make and the Node headers)`);
  return false;
}

test('scripts are started by the runner itself when the addon is built', async (t) => {
  if (!nativeBuilt(t)) return;
  const host = await CgiHost.start();
  try {
    assert.equal(host.spawnerKind, 'native');
    assert.deepEqual(host.spawnerPids, [], 'no helper process');
  } finally {
    await host.close();
  }
});

test('the spawner helper is used when asked for', async (t) => {
  if (!requirePeer(t, 'python3')) return;
  const host = await CgiHost.start({ spawner: 'helper' });
  try {
    assert.equal(host.spawnerKind, 'helper');
    assert.ok(host.spawnerPids.length >= 1);
  } finally {
    await host.close();
  }
});

test('a spawner helper killed from outside is replaced', async (t) => {
  if (!requirePeer(t, 'python3')) return;
  const server = await startCgiServer({ 'env.pl': ENV_SCRIPT, 'wait.sh': sh('sleep 2; printf "Content-Type: text/plain\\n\\nlate\\n"') }, { spawner: 'helper' });
  const log = captureLog();
  try {
    // Requests in flight on the helper that dies fail at once rather than hang.
    const inFlight = Array.from({ length: server.host.spawnerPids.length }, () => get(server.port, '/cgi-bin/wait.sh').then((r) => ({ status: r.status, at: Date.now() })));
    await waitFor('the scripts to start', () => (server.host.running === server.host.spawnerPids.length ? true : undefined));
    const [victim, ...others] = server.host.spawnerPids;
    const killedAt = Date.now();
    process.kill(victim!, 'SIGKILL');
    const results = await Promise.all(inFlight);
    const failed = results.find((r) => r.status === 500);
    assert.ok(failed, `statuses ${results.map((r) => r.status)}`);
    assert.ok(failed.at - killedAt < 1000, 'the failed request did not wait for its script');
    const replaced = await waitFor('a new helper', () => {
      const pids = server.host.spawnerPids;
      return pids.length === others.length + 1 && !pids.includes(victim!) ? pids : undefined;
    });
    assert.ok(replaced.length >= 1);
    const after = await Promise.all(Array.from({ length: 8 }, () => get(server.port, '/cgi-bin/env.pl')));
    for (const r of after) assert.equal(r.status, 200);
    assert.match(log.text(), /the spawner helper exited \(SIGKILL\)/);
  } finally {
    log.restore();
    await server.close();
  }
});

const kindNames = { native: 'the runner itself (native addon)', helper: 'the spawner helper', node: "the runner's own child_process.spawn" };

for (const kind of ['native', 'helper', 'node'] as const) {
  describe(`scripts started by ${kindNames[kind]}`, () => {
    let server: CgiServer | undefined;
    let port: number;
    before(async () => {
      if (kind === 'helper' && !fs.existsSync('/usr/bin/python3') && !process.env.PATH?.split(':').some((d) => fs.existsSync(path.join(d, 'python3')))) return;
      if (kind === 'native' && loadSpawnAddon() instanceof Error) return;
      server = await startCgiServer(scripts, { spawner: kind, timeout: 1, killGrace: 0.3 });
      port = server.port;
      fs.mkdirSync(path.join(path.dirname(server.dir), 'pids'));
    });
    after(() => server?.close());

    test('environment, argv and working directory', async (t) => {
      if (!server) return t.skip(`${kindNames[kind]} is not available here`);
      assert.equal(server.host.spawnerKind, kind);
      const env = envOf(await get(port, '/cgi-bin/env.pl/p?q'));
      assert.equal(env.PATH_INFO, '/p');
      assert.equal(env.QUERY_STRING, 'q');
      assert.equal(env['@CWD'], server.dir);
      assert.equal(env.CGI_RUNNER_TEST_SECRET, undefined);
    });

    test('a 2 MiB body, and a script that writes before it reads', async (t) => {
      if (!server) return t.skip(`${kindNames[kind]} is not available here`);
      const body = Buffer.alloc(2 << 20, 3);
      const post = (target: string) => rawRequest(port, Buffer.concat([Buffer.from(`POST ${target} HTTP/1.1\r\nHost: x\r\nContent-Length: ${body.length}\r\nConnection: close\r\n\r\n`), body]));
      assert.equal((await post('/cgi-bin/count.pl')).body.toString(), `bytes=${body.length}\n`);
      const r = await post('/cgi-bin/write-first.pl');
      assert.ok(r.body.toString().endsWith(`\nread=${body.length}\n`));
    });

    const pidOf = (name: string) =>
      waitFor(name, () => {
        const f = path.join(path.dirname(server!.dir), 'pids', name);
        const text = fs.existsSync(f) ? fs.readFileSync(f, 'utf8').trim() : '';
        return text ? Number(text) : undefined;
      });

    test('timeout and disconnect kill the process group', async (t) => {
      if (!server) return t.skip(`${kindNames[kind]} is not available here`);
      const timedOut = get(port, '/cgi-bin/hang.sh?t');
      const pgid = await pidOf('t');
      assert.equal((await timedOut).status, 504);
      await assertGroupGone(pgid);
      const socket = net.connect(port, '127.0.0.1');
      socket.on('error', () => {});
      socket.write('GET /cgi-bin/hang.sh?d HTTP/1.1\r\nHost: x\r\n\r\n');
      const pgid2 = await pidOf('d');
      socket.destroy();
      await assertGroupGone(pgid2, 900);
    });

    // child_process.spawn adopts nothing: only the runner (as subreaper) and the helper end these.
    if (kind !== 'node') {
      test('a child that left the process group (setsid) is ended once its script has finished', async (t) => {
        if (!server) return t.skip(`${kindNames[kind]} is not available here`);
        const r = await get(port, '/cgi-bin/daemon.sh?daemon');
        assert.equal(r.body.toString(), 'done\n');
        const pid = await pidOf('daemon');
        // Its own process group and session: the kill of the script's group cannot reach it.
        const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
        const [, , pgrp, session] = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
        assert.equal(Number(pgrp), pid);
        assert.equal(Number(session), pid);
        await waitFor('the orphan to be ended and reaped', () => (fs.existsSync(`/proc/${pid}`) ? undefined : true), 4000);
      });
    }

    test('stderr lines reach the log', async (t) => {
      if (!server) return t.skip(`${kindNames[kind]} is not available here`);
      const log = captureLog();
      try {
        assert.equal((await get(port, '/cgi-bin/stderr.sh')).body.toString(), 'ok\n');
        await eventually(() => log.text(), /stderr\.sh: to the log\n/);
      } finally {
        log.restore();
      }
    });

    describe("the body: whole when the script has finished before it is asked for, otherwise a stream", () => {
      const run = (name: string) => server!.host.run({ file: path.join(server!.dir, name), env: { PATH: '/usr/bin:/bin' }, body: null });
      const read = async (body: Readable) => {
        const chunks: Buffer[] = [];
        for await (const chunk of body) chunks.push(chunk as Buffer);
        return Buffer.concat(chunks);
      };
      const response = async (name: string) => {
        const outcome = await run(name);
        assert.equal(outcome.kind, 'response', name);
        return outcome as CgiResponse;
      };

      test('handed over whole, once; the stream after it is empty', async (t) => {
        if (!server) return t.skip(`${kindNames[kind]} is not available here`);
        const r = await response('whole.sh');
        await r.finished;
        assert.equal(r.takeWhole()?.toString(), 'hello\n');
        assert.equal(r.takeWhole(), undefined, 'consumed');
        assert.equal((await read(r.body)).length, 0);
        const empty = await response('empty.sh');
        await empty.finished;
        assert.equal(empty.takeWhole()?.length, 0, 'an empty body is an empty buffer');
      });

      test('not while the script may still write, nor once the stream was asked for', async (t) => {
        if (!server) return t.skip(`${kindNames[kind]} is not available here`);
        const r = await response('late.sh');
        assert.equal(r.takeWhole(), undefined, 'still writing');
        assert.equal((await read(r.body)).toString(), 'first\nsecond\n');
        assert.equal(r.takeWhole(), undefined, 'streamed');
        const finished = await response('whole.sh');
        await finished.finished;
        const body = finished.body;
        assert.equal(finished.takeWhole(), undefined, 'the stream has it');
        assert.equal((await read(body)).toString(), 'hello\n');
      });

      test('output beyond what is held waits for the reader, and none is lost', async (t) => {
        if (!server) return t.skip(`${kindNames[kind]} is not available here`);
        const r = await response('big.pl');
        await new Promise((resolve) => setTimeout(resolve, 300));
        if (kind !== 'helper') {
          // (The helper relays up to its own window ahead, so there the script may be done.)
          assert.equal(server.host.running, 1, 'the script waits on its full pipe');
          assert.equal(r.takeWhole(), undefined);
        }
        const body = await read(r.body);
        assert.equal(body.length, 1 << 20);
        assert.ok(body.every((b) => b === 0x79));
        assert.equal((await r.finished).exit?.code, 0);
      });

      test('a request body that failed before the script started: the script reads an empty stdin, not forever', async (t) => {
        if (!server) return t.skip(`${kindNames[kind]} is not available here`);
        const body = new PassThrough();
        body.on('error', () => {});
        body.write('never delivered');
        body.destroy(new Error('the client went away'));
        // Its error is out (heard by the listener above) before the host sees it.
        await new Promise((resolve) => setImmediate(resolve));
        const outcome = await server.host.run({ file: path.join(server.dir, 'wc.sh'), env: { PATH: '/usr/bin:/bin' }, body });
        assert.equal(outcome.kind, 'response');
        assert.equal((await read((outcome as CgiResponse).body)).toString(), '0\n');
        assert.equal((await outcome.finished).timedOut, false);
      });

      test('killed before the body was asked for: the stream ends in an error, with the reason', async (t) => {
        if (!server) return t.skip(`${kindNames[kind]} is not available here`);
        const log = captureLog();
        try {
          const r = await response('head-then-hang.sh');
          assert.equal((await r.finished).timedOut, true);
          assert.equal(r.takeWhole(), undefined);
          await assert.rejects(read(r.body), /longer than 1 s/);
        } finally {
          log.restore();
        }
      });
    });

    test('a local redirect whose script runs on until the timeout: the redirect is served, and the server goes on', async (t) => {
      if (!server) return t.skip(`${kindNames[kind]} is not available here`);
      const log = captureLog();
      try {
        const r = await get(port, '/cgi-bin/local-lingers.sh');
        assert.equal(r.body.toString(), 'ok\n');
        await waitFor('the lingering script to be killed', () => (server!.host.running === 0 ? true : undefined), 5000);
        assert.equal((await get(port, '/cgi-bin/stderr.sh')).body.toString(), 'ok\n');
      } finally {
        log.restore();
      }
    });

    test('a script that cannot be executed is a 500 with the reason in the log', async (t) => {
      if (!server) return t.skip(`${kindNames[kind]} is not available here`);
      const log = captureLog();
      try {
        for (const name of ['no-shebang.sh', 'bad-interpreter.sh']) {
          const r = await get(port, `/cgi-bin/${name}`);
          assert.equal(r.status, 500, name);
          assert.doesNotMatch(r.body.toString(), /ran anyway/);
        }
        await eventually(() => log.text(), /cannot execute .*no-shebang\.sh/);
        await eventually(() => log.text(), /cannot execute .*bad-interpreter\.sh/);
      } finally {
        log.restore();
      }
    });
  });
}
