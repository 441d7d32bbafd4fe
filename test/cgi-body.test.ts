// Request bodies on their way to a script's stdin (RFC 3875 §4.2): sizes, chunked bodies spooled to disk, a script that writes before it reads, and the --max-body limit.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { rawExchange, rawRequest, startCgiServer, type CgiServer } from './cgi-fixture.ts';

// Reads exactly CONTENT_LENGTH bytes and reports their count and a 32-bit checksum of them.
const COUNT = `#!/usr/bin/perl
binmode STDIN;
my $left = $ENV{CONTENT_LENGTH} || 0; my ($n, $sum) = (0, 0);
while ($left > 0) { my $got = read(STDIN, my $buf, $left > 65536 ? 65536 : $left); last unless $got; $n += $got; $left -= $got; $sum = ($sum + unpack('%32C*', $buf)) % 4294967296; }
sleep(1) if $ENV{QUERY_STRING} eq 'linger';
print "Content-Type: text/plain\\r\\n\\r\\nbytes=$n sum=$sum length=$ENV{CONTENT_LENGTH}\\n";
`;
// Writes 2 MiB of output before it reads a byte: a host that feeds stdin first would deadlock.
const WRITE_FIRST = `#!/usr/bin/perl
$| = 1;
print "Content-Type: application/octet-stream\\r\\n\\r\\n";
print "x" x 65536 for 1 .. 32;
my $left = $ENV{CONTENT_LENGTH}; my $n = 0;
while ($left > 0) { my $got = read(STDIN, my $buf, 65536); last unless $got; $n += $got; $left -= $got; }
print "\\nread=$n\\n";
`;
const IGNORE = `#!/bin/sh
printf 'Content-Type: text/plain\\n\\nignored the body\\n'
`;

function checksum(buf: Buffer): number {
  let sum = 0;
  for (let i = 0; i < buf.length; i++) sum += buf[i]!;
  return sum % 4294967296;
}

function chunked(body: Buffer, chunkSize: number): Buffer {
  const parts: Buffer[] = [];
  for (let off = 0; off < body.length; off += chunkSize) {
    const piece = body.subarray(off, off + chunkSize);
    parts.push(Buffer.from(piece.length.toString(16) + '\r\n'), piece, Buffer.from('\r\n'));
  }
  parts.push(Buffer.from('0\r\n\r\n'));
  return Buffer.concat(parts);
}

function spoolFiles(): string[] {
  const files: string[] = [];
  for (const entry of fs.readdirSync(os.tmpdir())) {
    if (!entry.startsWith('cgi-runner-body-')) continue;
    try {
      for (const f of fs.readdirSync(path.join(os.tmpdir(), entry))) if (f.startsWith(`${process.pid}-`)) files.push(f);
    } catch {
      // another process removed its directory meanwhile
    }
  }
  return files;
}

describe('request bodies', () => {
  let server: CgiServer;
  let port: number;
  const big = Buffer.alloc(5 * 1024 * 1024);
  for (let i = 0; i < big.length; i++) big[i] = (i * 7 + (i >> 11)) & 0xff;
  before(async () => {
    server = await startCgiServer({ 'count.pl': COUNT, 'write-first.pl': WRITE_FIRST, 'ignore.sh': IGNORE }, { maxBody: 6 * 1024 * 1024 });
    port = server.port;
  });
  after(() => server?.close());

  const post = (target: string, headers: string, body: Buffer) =>
    rawRequest(port, Buffer.concat([Buffer.from(`POST ${target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n${headers}\r\n`), body]));

  test('a 5 MiB body arrives whole', async () => {
    const r = await post('/cgi-bin/count.pl', `Content-Length: ${big.length}\r\n`, big);
    assert.equal(r.body.toString(), `bytes=${big.length} sum=${checksum(big)} length=${big.length}\n`);
  });

  test('a small chunked body is de-chunked, with CONTENT_LENGTH', async () => {
    const body = Buffer.from('hello, chunked world');
    const r = await post('/cgi-bin/count.pl', 'Transfer-Encoding: chunked\r\n', chunked(body, 3));
    assert.equal(r.body.toString(), `bytes=${body.length} sum=${checksum(body)} length=${body.length}\n`);
  });

  test('a 5 MiB chunked body is spooled to a temporary file, removed afterwards', async () => {
    const pending = post('/cgi-bin/count.pl?linger', 'Transfer-Encoding: chunked\r\n', chunked(big, 100_000));
    let seen: string[] = [];
    for (let i = 0; i < 100 && seen.length === 0; i++) {
      seen = spoolFiles();
      await sleep(10);
    }
    const r = await pending;
    assert.equal(r.body.toString(), `bytes=${big.length} sum=${checksum(big)} length=${big.length}\n`);
    assert.ok(seen.length > 0, 'the body was spooled to a file while the script ran');
    await sleep(50);
    assert.deepEqual(spoolFiles(), [], 'the spool file is removed');
  });

  test('an empty chunked body gives CONTENT_LENGTH=0', async () => {
    const r = await post('/cgi-bin/count.pl', 'Transfer-Encoding: chunked\r\n', Buffer.from('0\r\n\r\n'));
    assert.equal(r.body.toString(), 'bytes=0 sum=0 length=0\n');
  });

  test('a script that writes a lot before reading does not deadlock', async () => {
    const r = await post('/cgi-bin/write-first.pl', `Content-Length: ${big.length}\r\n`, big);
    assert.equal(r.status, 200);
    assert.equal(r.body.length, 2 * 1024 * 1024 + `\nread=${big.length}\n`.length);
    assert.ok(r.body.toString('latin1').endsWith(`\nread=${big.length}\n`));
  });

  test('a script that ignores its body: the connection still serves the next request', async () => {
    const head = `POST /cgi-bin/ignore.sh HTTP/1.1\r\nHost: x\r\nContent-Length: ${big.length}\r\n\r\n`;
    const [first, second] = await rawExchange(port, [Buffer.concat([Buffer.from(head), big]), 'GET /cgi-bin/count.pl HTTP/1.1\nHost: x\nConnection: close\n\n']);
    assert.equal(first!.body.toString(), 'ignored the body\n');
    assert.equal(second!.body.toString(), 'bytes=0 sum=0 length=\n');
  });

  test('--max-body: a larger Content-Length gets 413 before the body is sent', async () => {
    const r = await rawRequest(port, `POST /cgi-bin/count.pl HTTP/1.1\r\nHost: x\r\nContent-Length: ${7 * 1024 * 1024}\r\n\r\n`);
    assert.equal(r.status, 413);
  });

  test('--max-body: a larger chunked body gets 413', async () => {
    const seven = Buffer.alloc(7 * 1024 * 1024, 1);
    const r = await post('/cgi-bin/count.pl', 'Transfer-Encoding: chunked\r\n', chunked(seven, 1 << 20));
    assert.equal(r.status, 413);
  });

  test('Expect: 100-continue: refused before the body, accepted with 100 Continue', async () => {
    const refused = await rawRequest(port, `POST /cgi-bin/count.pl HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: ${7 * 1024 * 1024}\r\n\r\n`);
    assert.equal(refused.status, 413);
    const accepted = await new Promise<string>((resolve, reject) => {
      const socket = net.connect(port, '127.0.0.1');
      let text = '';
      socket.on('data', (d) => {
        text += d.toString();
        if (text.startsWith('HTTP/1.1 100 Continue\r\n\r\n') && !text.includes('200')) socket.write('abc');
      });
      socket.on('close', () => resolve(text));
      socket.on('error', reject);
      socket.write('POST /cgi-bin/count.pl HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 3\r\nConnection: close\r\n\r\n');
    });
    assert.match(accepted, /^HTTP\/1\.1 100 Continue\r\n\r\nHTTP\/1\.1 200 OK/);
    assert.match(accepted, /bytes=3 sum=294 length=3/);
  });
});
