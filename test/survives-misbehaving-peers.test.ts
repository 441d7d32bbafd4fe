// What must not bring a runner down: a FastCGI upstream that fails after a local redirect or in the same read as its header block, a web server that aborts a request waiting for a script slot, and a log reader that goes away.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { startServe, type RunningServer } from '../src/commands/serve.ts';
import { RecordDecoder } from '../src/fastcgi/decoder.ts';
import { FCGI_PARAMS, FCGI_STDIN, FCGI_STDOUT } from '../src/fastcgi/protocol.ts';
import { encodeStream } from '../src/fastcgi/record.ts';
import { freePort, makeTempDir, processGroupMembers, startProcess, stop, type ManagedProcess, type TempDir } from '../src/peers/index.ts';
import { captureLog, get, waitFor, writeScripts } from './cgi-fixture.ts';
import { WireClient, parseCgiResponse } from './fastcgi-wire.ts';
import { eventually } from './fixtures/eventually.ts';

const repoRoot = path.resolve(import.meta.dirname, '..');
const sh = (body: string) => `#!/bin/sh\n${body}\n`;
const scripts = {
  'ok.sh': sh(`printf 'Content-Type: text/plain\\n\\nok\\n'`),
  'sleep.sh': sh(`echo $$ > "$DOCUMENT_ROOT/sleep.pid"; sleep 30`),
};

let root: TempDir;
let cgiDir: string;

before(async () => {
  root = await makeTempDir('survives-');
  cgiDir = path.join(root.path, 'cgi-bin');
  fs.mkdirSync(cgiDir);
  writeScripts(cgiDir, scripts);
});
after(() => root?.cleanup());

/**
 * A FastCGI upstream that answers by the request's URI:
 * - redirect-close: a local redirect (Location, no body), then the connection closes mid-response;
 * - bad-after-head: a header block and a record with a bad version byte, in one write.
 */
async function misbehavingUpstream(): Promise<net.Server> {
  const server = net.createServer((socket) => {
    socket.on('error', () => {});
    let params = '';
    const decoder = new RecordDecoder((type, requestId, content) => {
      if (type === FCGI_PARAMS) params += Buffer.from(content).toString('latin1');
      if (type !== FCGI_STDIN) return;
      if (params.includes('redirect-close')) {
        socket.write(encodeStream(FCGI_STDOUT, requestId, Buffer.from('Location: /cgi-bin/ok.sh\r\n\r\n')));
        setTimeout(() => socket.destroy(), 100);
      } else if (params.includes('bad-after-head')) {
        const head = encodeStream(FCGI_STDOUT, requestId, Buffer.from('Content-Type: text/plain\r\n\r\nhi\n'));
        socket.write(Buffer.concat([head, Buffer.from([2, 6, 0, 1, 0, 0, 0, 0])]));
      }
    });
    socket.on('data', (chunk) => {
      try {
        decoder.push(chunk);
      } catch {
        socket.destroy();
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return server;
}

describe('serve in front of a FastCGI upstream that fails mid-way', () => {
  let upstream: net.Server;
  let running: RunningServer;
  before(async () => {
    upstream = await misbehavingUpstream();
    const { port } = upstream.address() as net.AddressInfo;
    running = await startServe({
      port: 0,
      host: '127.0.0.1',
      cgiDir,
      timeout: 5,
      maxBody: 1 << 20,
      maxScripts: 4,
      fcgiDir: path.join(root.path, 'no-apps'),
      fcgiPass: [`/up=127.0.0.1:${port}`],
      fcgiRoot: root.path,
    });
  });
  after(async () => {
    await running?.stop(1000);
    upstream?.close();
  });

  test('a local redirect whose upstream then closes the connection: the redirect is served, and so is the next request', async () => {
    const log = captureLog();
    try {
      const r = await get(running.port, '/up/redirect-close');
      assert.equal(r.status, 200);
      assert.equal(r.body.toString(), 'ok\n');
      await eventually(() => log.text(), /closed the connection in the middle of the response/);
      assert.equal((await get(running.port, '/cgi-bin/ok.sh')).body.toString(), 'ok\n');
    } finally {
      log.restore();
    }
  });

  test('a protocol error in the same read as the header block: the response fails, the server goes on', async () => {
    const log = captureLog();
    try {
      const r = await get(running.port, '/up/bad-after-head').catch((err: Error) => err);
      // Cut after "hi", or refused outright: either way not a complete 200.
      if (!(r instanceof Error)) assert.ok(r.status !== 200 || !r.complete, `got ${r.status}, complete ${r.complete}`);
      await eventually(() => log.text(), /protocol error/);
      assert.equal((await get(running.port, '/cgi-bin/ok.sh')).body.toString(), 'ok\n');
    } finally {
      log.restore();
    }
  });
});

describe('fcgi --cgi-dir when the web server gives up on a request waiting for a script slot', () => {
  let proc: ManagedProcess;
  let port: number;
  before(async () => {
    port = await freePort();
    proc = await startProcess({
      name: 'cgi-runner fcgi --cgi-dir',
      command: process.execPath,
      args: ['--import', 'tsx', path.join(repoRoot, 'src/cli.ts'), 'fcgi', '--listen', `127.0.0.1:${port}`, '--cgi-dir', cgiDir, '--max-scripts', '1', '--no-access-log'],
      cwd: repoRoot,
    });
  });
  after(() => proc && stop(proc));

  const params = (script: string, extra: Record<string, string> = {}) => ({
    REQUEST_METHOD: 'GET',
    SCRIPT_FILENAME: path.join(cgiDir, script),
    SCRIPT_NAME: `/${script}`,
    REQUEST_URI: `/${script}`,
    DOCUMENT_ROOT: root.path,
    QUERY_STRING: '',
    SERVER_PROTOCOL: 'HTTP/1.1',
    ...extra,
  });

  test('the connection closes while a request with half its body waits: the responder goes on, and the running script is ended', async () => {
    const c = await connectWhenReady(port);
    // The one slot: a script that sleeps.
    c.request(1, params('sleep.sh'));
    const pidFile = path.join(root.path, 'sleep.pid');
    const pid = await waitFor('the script to start', () => (fs.existsSync(pidFile) && fs.readFileSync(pidFile, 'utf8').trim() ? Number(fs.readFileSync(pidFile, 'utf8')) : undefined), 10_000);
    // A POST that announces 10 bytes and sends 5: it waits for the slot, its body open.
    c.begin(2);
    c.params(2, params('ok.sh', { REQUEST_METHOD: 'POST', CONTENT_LENGTH: '10', CONTENT_TYPE: 'text/plain' }));
    c.write(encodeStream(FCGI_STDIN, 2, Buffer.from('12345')));
    await sleep(300);
    // What nginx does when its client goes away: it closes the connection.
    c.close();
    await waitFor('the sleeping script to be ended', () => (processGroupMembers(pid).length === 0 ? true : undefined), 10_000);
    assert.equal(proc.exitStatus(), undefined, `the responder exited: ${proc.stderr()}`);
    const next = await WireClient.connect(port);
    next.request(1, params('ok.sh'));
    const res = await next.response(1, 10_000);
    assert.equal(parseCgiResponse(res.stdout).body.toString(), 'ok\n');
    next.close();
  });
});

async function connectWhenReady(port: number): Promise<WireClient> {
  const deadline = Date.now() + 20_000;
  for (;;) {
    try {
      return await WireClient.connect(port);
    } catch (err) {
      if (Date.now() > deadline) throw err;
      await sleep(100);
    }
  }
}

test('serve whose access log reader goes away (EPIPE) goes on serving', async () => {
  const child = spawn(process.execPath, ['--import', 'tsx', path.join(repoRoot, 'src/cli.ts'), 'serve', '--port', '0', '--cgi-dir', cgiDir], {
    cwd: repoRoot,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  try {
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    const port = Number((await waitFor('the URL', () => /http:\/\/127\.0\.0\.1:(\d+)\//.exec(out)?.[1], 20_000)));
    assert.equal((await get(port, '/cgi-bin/ok.sh')).body.toString(), 'ok\n');
    // The reader of stdout goes away: the next access lines meet a closed pipe.
    child.stdout.destroy();
    for (let i = 0; i < 3; i++) {
      assert.equal((await get(port, '/cgi-bin/ok.sh')).body.toString(), 'ok\n');
      await sleep(50);
    }
    assert.equal(child.exitCode, null, 'serve is still running');
    assert.equal(child.signalCode, null);
  } finally {
    const exited = new Promise((resolve) => child.once('exit', resolve));
    child.kill('SIGTERM');
    await exited;
  }
});
