// Every limit of `cgi-runner serve`, set by its flag on a real process: request head size and time (slowloris), body size,
// scripts at once and the queue behind them, script run time, and the output of a script whose client reads slowly.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { readStat } from '../src/bench/proc-stats.ts';
import { processGroupMembers } from '../src/peers/index.ts';
import { startCgiStack, type SoakStack } from '../src/soak/stack.ts';

const MiB = 1024 * 1024;

const SCRIPTS: Record<string, string> = {
  hello: '#!/bin/sh\nprintf "Content-Type: text/plain\\r\\n\\r\\nhello\\n"\n',
  sleep: '#!/bin/sh\necho $$ > "${QUERY_STRING%%&*}.pid" 2>/dev/null\nsleep "${QUERY_STRING##*&}"\nprintf "Content-Type: text/plain\\r\\n\\r\\nslept\\n"\n',
  length: `#!/usr/bin/perl
binmode STDIN; my $n = 0; my $buf; while (my $r = read(STDIN, $buf, 65536)) { $n += $r }
print "Content-Type: text/plain\\r\\n\\r\\n$ENV{CONTENT_LENGTH} $n\\n";
`,
  // Writes MiB mebibytes, recording in FILE how many it has handed to its stdout so far.
  big: `#!/usr/bin/perl
$| = 1; binmode STDOUT;
my %q = map { split /=/, $_, 2 } split /&/, $ENV{QUERY_STRING};
print "Content-Type: application/octet-stream\\r\\nContent-Length: " . ($q{mib} * 1048576) . "\\r\\n\\r\\n";
my $chunk = "z" x 65536;
for my $i (1 .. $q{mib} * 16) {
  print $chunk;
  if ($i % 16 == 0) { open(my $f, '>', $q{file}); print $f $i / 16; close $f; }
}
`,
};

const stacks: SoakStack[] = [];
async function serve(args: string[]): Promise<{ port: number; stack: SoakStack }> {
  const stack = await startCgiStack({ scripts: SCRIPTS, args });
  stacks.push(stack);
  return { port: Number(new URL(stack.baseUrl).port), stack };
}
after(() => Promise.all(stacks.map((s) => s.stop())));

function statusOf(text: string): number {
  return Number(/^HTTP\/1\.1 (\d{3})/.exec(text)?.[1] ?? 0);
}

/** Sends a request as is and resolves with everything until the server closes. */
function exchange(port: number, request: string | Buffer, timeoutMs = 15_000): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, '127.0.0.1');
    let text = '';
    socket.setTimeout(timeoutMs, () => socket.destroy(new Error('no answer')));
    socket.on('data', (c) => (text += c.toString('latin1')));
    socket.on('close', () => resolve(text));
    socket.on('error', reject);
    socket.write(request);
  });
}

describe('the request head', () => {
  test('--max-header-size: a larger head gets 431 and runs nothing; a smaller one is served', async () => {
    const { port } = await serve(['--max-header-size', '4096']);
    const big = await exchange(port, `GET /cgi-bin/hello HTTP/1.1\r\nHost: x\r\nCookie: ${'c'.repeat(5000)}\r\nConnection: close\r\n\r\n`);
    assert.equal(statusOf(big), 431);
    const fits = await exchange(port, `GET /cgi-bin/hello HTTP/1.1\r\nHost: x\r\nCookie: ${'c'.repeat(3000)}\r\nConnection: close\r\n\r\n`);
    assert.equal(statusOf(fits), 200);
  });

  test('slowloris: a head sent a byte a second is cut off at --header-timeout with a 408, holding no script slot meanwhile', async () => {
    const { port } = await serve(['--header-timeout', '2', '--max-scripts', '1', '--queue', '0']);
    const head = `GET /cgi-bin/hello HTTP/1.1\r\nHost: x\r\nX-Slow: ${'s'.repeat(200)}\r\n\r\n`;
    const socket = net.connect(port, '127.0.0.1');
    let received = '';
    let closedAt = 0;
    socket.on('data', (c) => (received += c.toString('latin1')));
    socket.on('error', () => {});
    const closed = new Promise<void>((resolve) => socket.on('close', () => ((closedAt = Date.now()), resolve())));
    const started = Date.now();
    let sent = 0;
    socket.write(head[sent++]!);
    const drip = setInterval(() => {
      if (socket.destroyed || sent >= head.length) return clearInterval(drip);
      socket.write(head[sent++]!);
    }, 1000);
    // Meanwhile the only script slot is free: a normal request is served at once.
    await sleep(500);
    const normal = await exchange(port, 'GET /cgi-bin/hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
    assert.equal(statusOf(normal), 200);
    await closed;
    clearInterval(drip);
    const after = closedAt - started;
    assert.equal(statusOf(received), 408, JSON.stringify(received));
    assert.ok(after >= 1900 && after < 4000, `cut off after ${after} ms`);
    assert.ok(sent < head.length, 'the head was never complete');
  });
});

describe('the request body', () => {
  test('--max-body: a larger Content-Length gets 413 before the body is read; a chunked body too', async () => {
    const { port } = await serve(['--max-body', '1000']);
    const declared = await exchange(port, 'POST /cgi-bin/length HTTP/1.1\r\nHost: x\r\nContent-Length: 2000\r\n\r\n');
    assert.equal(statusOf(declared), 413);
    const chunk = 'a'.repeat(600);
    const chunked = await exchange(port, `POST /cgi-bin/length HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n258\r\n${chunk}\r\n258\r\n${chunk}\r\n0\r\n\r\n`);
    assert.equal(statusOf(chunked), 413);
    const fits = await exchange(port, `POST /cgi-bin/length HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n258\r\n${chunk}\r\n0\r\n\r\n`);
    assert.equal(statusOf(fits), 200);
    assert.match(fits, /\r\n600 600\n/);
  });
});

describe('scripts', () => {
  test('--max-scripts and --queue: beyond the running and the waiting, 503 at once; the others are served in turn', async () => {
    const { port, stack } = await serve(['--max-scripts', '1', '--queue', '1']);
    const dir = stack.dir;
    const started = Date.now();
    const first = exchange(port, `GET /cgi-bin/sleep?${dir}/a&1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`);
    await sleep(200);
    const second = exchange(port, `GET /cgi-bin/sleep?${dir}/b&0 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`);
    await sleep(200);
    const third = await exchange(port, 'GET /cgi-bin/hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
    assert.equal(statusOf(third), 503);
    assert.ok(Date.now() - started < 900, 'refused without waiting');
    assert.equal(statusOf(await first), 200);
    assert.equal(statusOf(await second), 200);
  });

  test('--timeout: a script running longer gets its client a 504, and its process group is killed', async () => {
    const { port, stack } = await serve(['--timeout', '1']);
    const pidFile = path.join(stack.dir, 'slow');
    const started = Date.now();
    const answer = await exchange(port, `GET /cgi-bin/sleep?${pidFile}&30 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`);
    const took = Date.now() - started;
    assert.equal(statusOf(answer), 504);
    assert.ok(took >= 900 && took < 4000, `answered after ${took} ms`);
    const pid = Number(fs.readFileSync(`${pidFile}.pid`, 'utf8'));
    const deadline = Date.now() + 5000;
    while (processGroupMembers(pid).length > 0 && Date.now() < deadline) await sleep(50);
    assert.deepEqual(processGroupMembers(pid), []);
  });

  test('a client that reads slowly pauses the script: its output is not buffered without bound', async (t) => {
    const { port, stack } = await serve([]);
    const progress = path.join(stack.dir, 'progress');
    const rssBefore = readStat(stack.runner.pid)!.rssBytes;
    const socket = net.connect(port, '127.0.0.1');
    socket.on('error', () => {});
    let received = 0;
    socket.on('data', (c: Buffer) => {
      received += c.length;
      // Read the head, then stop reading: the client is slow.
      socket.pause();
    });
    socket.write(`GET /cgi-bin/big?mib=96&file=${progress} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`);
    await sleep(2500);
    const written = Number(fs.readFileSync(progress, 'utf8'));
    const rssGrowth = readStat(stack.runner.pid)!.rssBytes - rssBefore;
    t.diagnostic(`96 MiB offered to a client reading nothing: the script wrote ${written} MiB, the runner grew by ${(rssGrowth / MiB).toFixed(1)} MiB`);
    // Socket buffers on both sides, the pipe and the stream buffers hold some MiB; not 96.
    assert.ok(written < 40, `the script wrote ${written} MiB while the client read none`);
    assert.ok(rssGrowth < 48 * MiB, `the runner grew by ${(rssGrowth / MiB).toFixed(0)} MiB`);
    // Reading again lets it finish: all 96 MiB arrive.
    const done = new Promise<void>((resolve) => socket.on('close', resolve));
    socket.removeAllListeners('data');
    socket.on('data', (c: Buffer) => (received += c.length));
    socket.resume();
    await done;
    assert.ok(received > 96 * MiB, `${received} bytes arrived`);
    assert.equal(Number(fs.readFileSync(progress, 'utf8')), 96);
  });
});
