// The in-process spawner (src/cgi/native): what a script inherits from the runner, what the runner keeps per request, and an orphan sweep that leaves the runner's other children alone.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { loadSpawnAddon, NativeSpawner } from '../src/cgi/native-spawner.ts';
import { get, rawRequest, startCgiServer, waitFor, type CgiServer } from './cgi-fixture.ts';

const sh = (body: string) => `#!/bin/sh\n${body}\n`;

/** pid, ppid, process group and session of a process, from /proc/PID/stat. */
function statOf(line: string): { pid: number; ppid: number; pgrp: number; session: number } {
  const pid = Number(line.slice(0, line.indexOf(' ')));
  const [, ppid, pgrp, session] = line.slice(line.lastIndexOf(')') + 2).split(' ').map(Number);
  return { pid, ppid: ppid!, pgrp: pgrp!, session: session! };
}

function isAlive(pid: number): boolean {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return false;
  }
}

const unavailable = loadSpawnAddon();

describe('the in-process spawner', { skip: unavailable instanceof Error && !process.env.CI ? `${(unavailable as Error).message}` : false }, () => {
  let server: CgiServer;
  let pidsDir: string;
  before(async () => {
    server = await startCgiServer(
      {
        'stat.sh': sh(`read -r line < /proc/$$/stat; printf 'Content-Type: text/plain\\n\\n%s\\n' "$line"`),
        // Shell builtins only: dash blocks every signal around the vfork of a command such as grep,
        // which would then read that passing mask from /proc.
        'signals.sh': sh(`printf 'Content-Type: text/plain\\n\\n'; while read -r name value; do case $name in SigIgn:|SigBlk:) printf '%s %s\\n' "$name" "$value";; esac; done < /proc/$$/status`),
        'hello.sh': sh(`printf 'Content-Type: text/plain\\n\\nhello\\n'`),
        'read.sh': sh(`n=$(wc -c); printf 'Content-Type: text/plain\\n\\n%s\\n' $n`),
        'no-shebang.sh': 'printf "Content-Type: text/plain\\n\\nran anyway\\n"\n',
        'daemon.sh': sh(
          `f="$DOCUMENT_ROOT/pids/$QUERY_STRING"; (setsid sh -c "echo \\$\\$ > '$f'; exec sleep 30" >/dev/null 2>&1 &); while [ ! -s "$f" ]; do sleep 0.01; done; printf 'Content-Type: text/plain\\n\\ndone\\n'`,
        ),
      },
      { spawner: 'native' },
    );
    pidsDir = path.join(path.dirname(server.dir), 'pids');
    fs.mkdirSync(pidsDir);
  });
  after(() => server?.close());

  test('a script is a child of the runner and leads its own session', async () => {
    assert.equal(server.host.spawnerKind, 'native');
    const stat = statOf((await get(server.port, '/cgi-bin/stat.sh')).body.toString().trim());
    assert.equal(stat.ppid, process.pid, 'started by the runner, with no process between');
    assert.equal(stat.pgrp, stat.pid, 'leads its process group');
    assert.equal(stat.session, stat.pid, 'leads its session');
  });

  test('a script gets every signal at its default and none blocked (Node ignores SIGPIPE)', async () => {
    const text = (await get(server.port, '/cgi-bin/signals.sh')).body.toString();
    const mask = (name: string) => BigInt('0x' + new RegExp(`^${name}:\\s+([0-9a-f]+)$`, 'm').exec(text)![1]);
    assert.equal(mask('SigBlk'), 0n);
    // Signals 32 and 33 are glibc's own (thread cancellation, set*id), which posix_spawn may not
    // touch and no script can use (SIGRTMIN is 34); every other signal is at its default.
    const glibcInternal = (1n << 31n) | (1n << 32n);
    assert.equal(mask('SigIgn') & ~glibcInternal, 0n, `ignored: ${mask('SigIgn').toString(16)}`);
  });

  test('the runner keeps no descriptor per request: with a body, without, or a script that cannot start', async () => {
    const count = () => fs.readdirSync('/proc/self/fd').length;
    const post = () => rawRequest(server.port, 'POST /cgi-bin/read.sh HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nabcde');
    await get(server.port, '/cgi-bin/hello.sh');
    await post();
    const before = count();
    for (let i = 0; i < 30; i++) {
      assert.equal((await get(server.port, '/cgi-bin/hello.sh')).body.toString(), 'hello\n');
      assert.equal((await post()).body.toString(), '5\n');
      assert.equal((await get(server.port, '/cgi-bin/no-shebang.sh')).status, 500);
    }
    // The get() client's own socket may still be closing: allow it a moment.
    await waitFor('descriptors to be closed', () => (count() <= before ? true : undefined), 2000);
  });

  test("the orphan sweep ends a script's escaped daemon but none of the runner's own children", async () => {
    // One child started before and one after the host: both are the runner's, neither an orphan.
    const opts = { stdio: 'ignore' as const };
    const laterChild = spawn('sleep', ['30'], opts);
    try {
      const r = await get(server.port, '/cgi-bin/daemon.sh?daemon');
      assert.equal(r.body.toString(), 'done\n');
      const daemon = Number(fs.readFileSync(path.join(pidsDir, 'daemon'), 'utf8'));
      const stat = statOf(fs.readFileSync(`/proc/${daemon}/stat`, 'utf8'));
      assert.equal(stat.ppid, process.pid, 'the runner adopted the daemon (subreaper)');
      await waitFor('the daemon to be ended and reaped', () => (fs.existsSync(`/proc/${daemon}`) ? undefined : true), 4000);
      // More sweeps have run since: the runner's own child is still there.
      await sleep(500);
      assert.ok(isAlive(laterChild.pid!), 'a child_process child survived the sweeps');
      assert.ok(isAlive(earlierChild.pid!), 'a child started before the host survived the sweeps');
    } finally {
      laterChild.kill('SIGKILL');
    }
  });
});

describe('the subreaper role', { skip: unavailable instanceof Error && !process.env.CI ? `${(unavailable as Error).message}` : false }, () => {
  /** The ppid of a process that `sh` starts in the background and leaves behind when it exits. */
  async function orphanParent(): Promise<number> {
    const child = spawn('sh', ['-c', 'sleep 30 >/dev/null 2>&1 & echo $!'], { stdio: ['ignore', 'pipe', 'ignore'] });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    await new Promise((resolve) => child.once('close', resolve));
    const orphan = Number(out.trim());
    try {
      return statOf(fs.readFileSync(`/proc/${orphan}/stat`, 'utf8')).ppid;
    } finally {
      process.kill(orphan, 'SIGKILL');
    }
  }

  test('lasts while a spawner is open: once the last one has closed, the runner adopts nothing', async () => {
    const spawner = new NativeSpawner(unavailable as Exclude<typeof unavailable, Error>);
    try {
      assert.equal(await orphanParent(), process.pid, 'adopted while a spawner is open');
    } finally {
      await spawner.close();
    }
    // Adopted with no sweep left to end and reap them, they would stay here as zombies.
    assert.notEqual(await orphanParent(), process.pid, 'not adopted once the last spawner has closed');
  });
});

// Started when this file loads, before the host and its subreaper: an earlier child of the runner.
const earlierChild = spawn('sleep', ['60'], { stdio: 'ignore' });
earlierChild.unref();
process.once('exit', () => earlierChild.kill('SIGKILL'));

describe("a script's output is first read when it exits, or once firstReadDelayMs has passed", { skip: unavailable instanceof Error && !process.env.CI ? `${(unavailable as Error).message}` : false }, () => {
  let dir: string;
  before(() => {
    dir = fs.mkdtempSync('/tmp/cgi-first-read-');
  });
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  /** Runs a script through a spawner of its own: when each chunk of stdout arrived (ms after the spawn), the whole output, and the exit. */
  async function run(body: string, firstReadDelayMs: number) {
    const file = path.join(dir, `s${Math.random().toString(36).slice(2)}.sh`);
    fs.writeFileSync(file, sh(body), { mode: 0o755 });
    const spawner = new NativeSpawner(unavailable as Exclude<typeof unavailable, Error>, { firstReadDelayMs });
    try {
      const started = performance.now();
      const proc = spawner.spawn({ file, argv: [file], cwd: dir, env: { PATH: '/usr/bin:/bin' }, stdin: false });
      const chunks: Array<{ at: number; text: string }> = [];
      proc.stdout.on('data', (chunk: Buffer) => chunks.push({ at: performance.now() - started, text: chunk.toString() }));
      await new Promise((resolve) => proc.stdout.once('end', resolve));
      const ended = performance.now() - started;
      return { chunks, output: chunks.map((c) => c.text).join(''), ended, exit: await proc.exited };
    } finally {
      await spawner.close();
    }
  }

  test('a script that exits sooner is read then, all at once: its exit ends the wait', async () => {
    const { chunks, output, ended, exit } = await run(`printf 'one\\n'; printf 'two\\n'`, 5000);
    assert.equal(output, 'one\ntwo\n');
    assert.equal(chunks.length, 1, 'both writes, read together after the exit');
    assert.ok(ended < 2500, `read ${ended.toFixed(0)} ms after the start: the exit should have ended the 5 s wait`);
    assert.equal(exit.code, 0);
  });

  test('a script still running when the delay has passed is read as it writes', async () => {
    const { chunks, output } = await run(`printf 'first\\n'; sleep 3; printf 'second\\n'`, 500);
    assert.equal(output, 'first\nsecond\n');
    assert.equal(chunks[0]!.text, 'first\n');
    // (libuv's timers count from the loop's time, which may be a little behind: hence 300, not 500.)
    assert.ok(chunks[0]!.at >= 300 && chunks[0]!.at < 2500, `first bytes after ${chunks[0]!.at.toFixed(0)} ms: not before the delay, long before the script's end`);
  });

  test('a script that filled its pipe (256 KiB) before exiting: all of it arrives, then the end', async () => {
    const { output, ended, exit } = await run(`head -c 262144 /dev/zero | tr '\\0' x`, 5000);
    assert.equal(output.length, 262144);
    assert.ok(ended < 2500, `read ${ended.toFixed(0)} ms after the start: the exit should have ended the 5 s wait`);
    assert.match(output, /^x+$/);
    assert.equal(exit.code, 0);
  });

  test('a background job that keeps writing to stderr does not hold the event loop when the script exits', async () => {
    // It writes to stderr as fast as it can (its stdout is that too), so the pipe is never empty; the
    // orphan sweep ends it 0.2 s after the exit.
    const { output, ended, exit } = await run(`(exec cat /dev/zero >&2) & printf 'done\\n'`, 5000);
    assert.equal(output, 'done\n');
    assert.ok(ended < 2500, `read ${ended.toFixed(0)} ms after the start`);
    assert.equal(exit.code, 0);
  });

  test('output that a background job still writes after the script has exited is read to its end', async () => {
    // The script exits long before the delay; its pipe stays open in the background job (for less
    // than the 0.2 s after which the orphan sweep ends what a finished script left running).
    const { output, exit } = await run(`printf 'early\\n'; (sleep 0.02; printf 'late\\n') &`, 5000);
    assert.equal(output, 'early\nlate\n');
    assert.equal(exit.code, 0);
  });
});

describe('a spawn that does not wait for the script to call execve', { skip: unavailable instanceof Error && !process.env.CI ? `${(unavailable as Error).message}` : false }, () => {
  let dir: string;
  let spawner: NativeSpawner;
  before(() => {
    dir = fs.mkdtempSync('/tmp/cgi-no-wait-');
    spawner = new NativeSpawner(unavailable as Exclude<typeof unavailable, Error>);
  });
  after(async () => {
    await spawner.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  function script(name: string, body: string): string {
    const file = path.join(dir, name);
    fs.writeFileSync(file, sh(body), { mode: 0o755 });
    return file;
  }

  async function output(proc: ReturnType<NativeSpawner['spawn']>): Promise<string> {
    const chunks: Buffer[] = [];
    proc.stdout.on('data', (chunk: Buffer) => chunks.push(chunk));
    await new Promise((resolve) => proc.stdout.once('end', resolve));
    return Buffer.concat(chunks).toString();
  }

  test('200 scripts started in one turn each run with their own arguments and environment', async () => {
    const file = script('echo.sh', `printf '%s %s\\n' "$1" "$WHO"`);
    const procs = Array.from({ length: 200 }, (_, i) => spawner.spawn({ file, argv: [file, `arg${i}`], cwd: dir, env: { PATH: '/usr/bin:/bin', WHO: `env${i}` }, stdin: false }));
    const outputs = await Promise.all(procs.map(output));
    const exits = await Promise.all(procs.map((p) => p.exited));
    outputs.forEach((out, i) => assert.equal(out, `arg${i} env${i}\n`));
    assert.ok(exits.every((e) => e.code === 0));
  });

  for (const signal of ['SIGKILL', 'SIGTERM'] as const) {
    test(`a script sent ${signal} in the turn it was spawned in, before it has made its process group, still gets it`, async () => {
      // The signal may come before the new process has called setsid: then its group does not exist
      // yet, and the signal must reach the process itself. Many tries, so some fall in that moment.
      // The runner handles SIGTERM here, as `serve` does: the script must not inherit the handler.
      const file = script('sleep.sh', 'exec sleep 3');
      const handler = () => {};
      process.on('SIGTERM', handler);
      try {
        const procs = Array.from({ length: 100 }, () => {
          const proc = spawner.spawn({ file, argv: [file], cwd: dir, env: { PATH: '/usr/bin:/bin' }, stdin: false });
          proc.killGroup(signal);
          return proc;
        });
        const exits = await Promise.all(procs.map((p) => p.exited));
        assert.deepEqual(new Set(exits.map((e) => e.signal ?? `exit ${e.code}`)), new Set([signal]));
      } finally {
        process.off('SIGTERM', handler);
      }
    });
  }

  test('a script that cannot be executed: its exit says why', async () => {
    const file = path.join(dir, 'no-shebang');
    fs.writeFileSync(file, 'echo hi\n', { mode: 0o755 });
    const notExecutable = spawner.spawn({ file, argv: [file], cwd: dir, env: {}, stdin: false });
    const noDirectory = spawner.spawn({ file, argv: [file], cwd: path.join(dir, 'missing'), env: {}, stdin: true });
    assert.equal(await output(notExecutable), '');
    assert.match((await notExecutable.exited).error ?? '', /^cannot execute .*no-shebang: Exec format error$/);
    assert.match((await noDirectory.exited).error ?? '', /^cannot execute .*no-shebang: No such file or directory$/);
  });
});
