// The floor server of bench:cgi (src/bench/cgi-floor.ts): it runs its one script per request through the native addon and answers with the script's body and Content-Type.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { loadSpawnAddon } from '../src/cgi/native-spawner.ts';
import { freePort, startProcess, stop, waitForPort, type ManagedProcess } from '../src/peers/index.ts';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const unavailable = loadSpawnAddon();

function get(port: number, agent?: http.Agent): Promise<{ status: number; type: string | undefined; length: string | undefined; body: string }> {
  return new Promise((resolve, reject) => {
    http
      .get({ host: '127.0.0.1', port, path: '/cgi-bin/x', agent }, (res) => {
        let body = '';
        res.setEncoding('latin1');
        res.on('data', (c) => (body += c));
        res.on('end', () => resolve({ status: res.statusCode!, type: res.headers['content-type'], length: res.headers['content-length'], body }));
      })
      .on('error', reject);
  });
}

describe('the CGI floor server', { skip: unavailable instanceof Error && !process.env.CI ? (unavailable as Error).message : false }, () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'cgi-floor-'));
  const servers: ManagedProcess[] = [];
  after(async () => {
    for (const server of servers) await stop(server);
    fs.rmSync(dir, { recursive: true, force: true });
  });

  async function floor(name: string, body: string): Promise<number> {
    const script = path.join(dir, name);
    fs.writeFileSync(script, `#!/bin/sh\n${body}\n`, { mode: 0o755 });
    const port = await freePort();
    const proc = await startProcess({ name, command: process.execPath, args: ['--import', 'tsx', 'src/bench/cgi-floor.ts', '--port', String(port), '--script', script], cwd: ROOT, stdout: 'ignore' });
    servers.push(proc);
    await waitForPort(port, '127.0.0.1', 30_000, proc.exitSignal);
    return port;
  }

  test('answers with the body after the header block and its Content-Type (CRLF or LF lines)', async () => {
    const crlf = await floor('crlf.sh', `printf 'Content-Type: text/x-one\\r\\nX-Other: 1\\r\\n\\r\\nhello\\n'`);
    assert.deepEqual(await get(crlf), { status: 200, type: 'text/x-one', length: '6', body: 'hello\n' });
    const lf = await floor('lf.sh', `printf 'X-Other: 1\\ncontent-type: text/x-two\\n\\nline one\\n\\nline three\\n'`);
    assert.deepEqual(await get(lf), { status: 200, type: 'text/x-two', length: '21', body: 'line one\n\nline three\n' });
  });

  test('a script with no header block gets 502', async () => {
    const port = await floor('none.sh', 'echo no header block');
    assert.equal((await get(port)).status, 502);
  });

  test('16 requests at once over kept-alive connections, each answered by its own script', async () => {
    const port = await floor('pid.sh', `printf 'Content-Type: text/plain\\n\\n%s\\n' $$`);
    const agent = new http.Agent({ keepAlive: true, maxSockets: 16 });
    try {
      const answers = await Promise.all(Array.from({ length: 48 }, () => get(port, agent)));
      assert.ok(answers.every((a) => a.status === 200 && /^\d+\n$/.test(a.body)));
      assert.equal(new Set(answers.map((a) => a.body)).size, 48, 'a new process for every request');
    } finally {
      agent.destroy();
    }
  });
});
