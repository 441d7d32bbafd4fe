// Integration tests of the peer launchers: each starts a real server, talks to it, and checks that stopping leaves no process behind.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, test, type TestContext } from 'node:test';
import { fileURLToPath } from 'node:url';
import { waitFor } from './fixtures/eventually.ts';
import {
  cgiFcgiRequest,
  errorLogProblems,
  findPeer,
  freePort,
  makeTempDir,
  NGINX_FASTCGI_PARAMS,
  parseCgiOutput,
  processGroupMembers,
  requirePeer,
  startApache,
  startFcgiwrap,
  startNginx,
  startPhpFpm,
  startProcess,
  startSpawnFcgi,
  stop,
  waitForPath,
  waitForPort,
  writeShared,
  type TempDir,
} from '../src/peers/index.ts';

/**
 * Asserts that the process group has no live member and that none of the pids exists any more.
 * A member killed together with its parent is an orphan zombie until init reaps it, which some
 * inits do only every couple of seconds, so the ESRCH check may wait for that.
 */
async function assertGone(pids: number[], pgid: number): Promise<void> {
  assert.ok(pids.length > 0, 'expected some pids to check');
  assert.deepEqual(processGroupMembers(pgid), [], `process group ${pgid} still has live members`);
  const deadline = Date.now() + 5000;
  for (const pid of pids) {
    while (processGroupMembers(pgid, true).includes(pid) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    assert.throws(() => process.kill(pid, 0), { code: 'ESRCH' }, `pid ${pid} is still alive`);
  }
}

function requireAll(t: TestContext, ...names: string[]): boolean {
  return names.every((name) => requirePeer(t, name) !== undefined);
}

const HELLO_PHP = `<?php
header('X-Served-By: php-fpm');
echo "hello from ", PHP_SAPI, " ", $_SERVER['REQUEST_METHOD'], " ", file_get_contents('php://input');
`;

const HELLO_SH = `#!/bin/sh
printf 'Content-Type: text/plain\\r\\nX-Gateway: %s\\r\\n\\r\\n' "$GATEWAY_INTERFACE"
echo "hello from sh query=$QUERY_STRING"
`;

let docroot: TempDir;

before(async () => {
  docroot = await makeTempDir('peers-docroot-');
  await writeShared(path.join(docroot.path, 'hello.php'), HELLO_PHP);
  await writeShared(path.join(docroot.path, 'hello.sh'), HELLO_SH, 0o755);
});

after(async () => {
  await docroot?.cleanup();
});

describe('ports and processes', () => {
  test('freePort gives a bindable port and waitForPort / waitForPath time out on nothing', async () => {
    const port = await freePort();
    assert.ok(port > 1024 && port < 65536);
    await assert.rejects(waitForPort(port, '127.0.0.1', 150), /nothing accepted connections on 127\.0\.0\.1:\d+/);
    await assert.rejects(waitForPath(path.join(docroot.path, 'missing.sock'), 150), /missing\.sock/);
  });

  test('makeTempDir makes a directory www-data can enter', async () => {
    const dir = await makeTempDir();
    assert.equal(fs.statSync(dir.path).mode & 0o777, 0o755);
    await dir.cleanup();
    assert.equal(fs.existsSync(dir.path), false);
  });

  test('stop escalates to SIGKILL for a group member that ignores SIGTERM', async () => {
    // The shell ignores TERM and so does the background child it leaves in the group.
    const proc = await startProcess({
      name: 'stubborn',
      command: '/bin/sh',
      args: ['-c', 'trap "" TERM; sh -c \'trap "" TERM; echo child $$; sleep 30\' & echo started; wait'],
    });
    while (!proc.stdout().includes('child')) await new Promise((r) => setTimeout(r, 10));
    const members = processGroupMembers(proc.pgid);
    assert.ok(members.length >= 3, `expected shell, child and sleep in the group, got ${members}`);
    const t0 = Date.now();
    await stop(proc, 'SIGTERM', 300);
    assert.ok(Date.now() - t0 >= 300, 'should have waited for the grace period');
    assert.equal(proc.exitStatus()?.signal, 'SIGKILL');
    await assertGone(members, proc.pgid);
  });

  test('a Ctrl-C on the parent stops every started peer', async (t) => {
    const dir = await makeTempDir('peers-sigint-');
    const processModule = path.join(path.dirname(fileURLToPath(import.meta.url)), '../src/peers/process.ts');
    // .mts: outside the package, tsx would otherwise compile it as CommonJS (no top-level await).
    const script = path.join(dir.path, 'parent.mts');
    fs.writeFileSync(
      script,
      `import { startProcess } from ${JSON.stringify(processModule)};
const a = await startProcess({ name: 'a', command: 'sleep', args: ['30'] });
const b = await startProcess({ name: 'b', command: '/bin/sh', args: ['-c', 'sleep 30 & wait'] });
console.log(JSON.stringify([a.pid, b.pid]));
setInterval(() => {}, 1000);
`,
    );
    const parent = spawn(process.execPath, ['--import', 'tsx', script], { stdio: ['ignore', 'pipe', 'inherit'] });
    let pids: number[] | undefined;
    // Whatever fails below, the parent (which would otherwise live forever) and its peers go.
    t.after(async () => {
      if (parent.exitCode === null && parent.signalCode === null) parent.kill('SIGKILL');
      for (const pid of pids ?? []) {
        for (const member of processGroupMembers(pid)) {
          try {
            process.kill(member, 'SIGKILL');
          } catch {
            // Gone between the listing and the kill.
          }
        }
      }
      await dir.cleanup();
    });
    pids = await new Promise<number[]>((resolve, reject) => {
      let out = '';
      parent.stdout.on('data', (c: Buffer) => {
        out += c;
        if (out.includes('\n')) resolve(JSON.parse(out) as number[]);
      });
      parent.once('exit', (code) => reject(new Error(`parent exited early with ${code}`)));
    });
    // The shell forks its sleep a moment after startProcess returns: wait for it.
    const started = pids;
    const groups = await waitFor('sleep, and sh with its sleep', () => {
      const members = started.map((pid) => processGroupMembers(pid));
      return members.flat().length >= 3 ? members : undefined;
    });
    parent.kill('SIGINT');
    const [code] = await new Promise<[number | null]>((resolve) => parent.once('exit', (c) => resolve([c])));
    assert.equal(code, 130);
    for (const [i, pid] of started.entries()) await assertGone(groups[i]!, pid);
  });
});

describe('availability', () => {
  test('findPeer finds installed programs and not made-up ones', (t) => {
    if (!requireAll(t, 'nginx')) return;
    assert.ok(path.isAbsolute(findPeer('nginx')!));
    assert.equal(findPeer('no-such-peer-xyz'), undefined);
  });

  test('requirePeer skips outside CI and throws with the apt package under CI', (t) => {
    const saved = process.env.CI;
    const skipped: string[] = [];
    const fake = { skip: (msg: string) => skipped.push(msg) } as unknown as TestContext;
    try {
      process.env.CI = 'true';
      assert.throws(() => requirePeer(fake, 'no-such-peer-xyz'), /no-such-peer-xyz.*apt-get install/);
      delete process.env.CI;
      assert.equal(requirePeer(fake, 'no-such-peer-xyz'), undefined);
      assert.deepEqual(skipped, ['install no-such-peer-xyz: apt-get install no-such-peer-xyz']);
    } finally {
      if (saved === undefined) delete process.env.CI;
      else process.env.CI = saved;
    }
    t.diagnostic('ok');
  });
});

describe('nginx', () => {
  test('serves a static return and leaves nothing behind after stop', async (t) => {
    if (!requireAll(t, 'nginx')) return;
    const nginx = await startNginx({ http: 'server { listen 127.0.0.1:{{port}}; location / { return 200 "ok"; } }' });
    const res = await fetch(`${nginx.url}/anything`);
    assert.equal(res.status, 200);
    assert.equal(await res.text(), 'ok');
    const pids = processGroupMembers(nginx.pid);
    assert.ok(pids.length >= 2, 'master and a worker');
    assert.deepEqual(nginx.errors(), []);
    await nginx.stop();
    await assertGone(pids, nginx.pid);
    assert.equal(fs.existsSync(nginx.dir), false, 'temp dir removed');
  });

  test('reload applies a new config and rejects a broken one', async (t) => {
    if (!requireAll(t, 'nginx')) return;
    const nginx = await startNginx({ http: 'server { listen 127.0.0.1:{{port}}; return 200 "one"; }' });
    try {
      await nginx.reload({ http: 'server { listen 127.0.0.1:{{port}}; return 200 "two"; }' });
      // Old workers may still answer a request already accepted; a fresh connection reaches a new one.
      assert.equal(await (await fetch(nginx.url!, { headers: { connection: 'close' } })).text(), 'two');
      await assert.rejects(nginx.reload({ http: 'server { nonsense; }' }), /nginx: reload failed: .*unknown directive "nonsense"/);
      assert.equal(await (await fetch(nginx.url!)).text(), 'two');
    } finally {
      await nginx.stop();
    }
  });

  test('a full config file runs as given, and a broken one fails with the reason', async (t) => {
    if (!requireAll(t, 'nginx')) return;
    const nginx = await startNginx({
      fullConfig: `worker_processes 1;
error_log {{dir}}/custom-error.log;
events {}
http { access_log off; server { listen 127.0.0.1:{{port}}; return 200 "full"; } }`,
    });
    try {
      assert.equal(await (await fetch(nginx.url!)).text(), 'full');
      assert.equal(nginx.errorLogPath, path.join(nginx.dir, 'custom-error.log'));
    } finally {
      await nginx.stop();
    }
    await assert.rejects(startNginx({ http: 'server { listen 127.0.0.1:{{port}}; bogus_directive; }' }), /^Error: nginx: failed to start .*unknown directive "bogus_directive"/s);
  });

  test('errorLogProblems keeps only error and worse', () => {
    const log = [
      '2024/01/01 00:00:00 [notice] 1#1: start worker processes',
      '2024/01/01 00:00:00 [warn] 1#1: something mild',
      '2024/01/01 00:00:00 [error] 2#2: *1 connect() failed',
      '2024/01/01 00:00:00 [crit] 2#2: *1 disk full',
    ].join('\n');
    assert.equal(errorLogProblems(log).length, 2);
  });
});

describe('apache', () => {
  test('mod_cgid runs a shell CGI script as www-data', async (t) => {
    if (!requireAll(t, 'apache2', 'mod_cgid')) return;
    const apache = await startApache({
      modules: ['cgid', 'alias'],
      config: `ScriptAlias /cgi-bin/ ${docroot.path}/\n<Directory ${docroot.path}>\n  Require all granted\n</Directory>`,
    });
    try {
      const res = await fetch(`${apache.url}/cgi-bin/hello.sh?a=1`);
      assert.equal(res.status, 200);
      assert.equal(res.headers.get('x-gateway'), 'CGI/1.1');
      assert.equal(await res.text(), 'hello from sh query=a=1\n');
      assert.deepEqual(apache.errors(), []);
    } finally {
      const pids = processGroupMembers(apache.pid);
      await apache.stop();
      await assertGone(pids, apache.pid);
    }
  });
});

describe('php-fpm', () => {
  for (const listen of ['unix', 'tcp'] as const) {
    test(`serves hello.php through nginx fastcgi_pass over ${listen}`, async (t) => {
      if (!requireAll(t, 'nginx', 'php-fpm')) return;
      const fpm = await startPhpFpm({ listen, children: 2, docroot: docroot.path });
      const nginx = await startNginx({
        http: `server {
  listen 127.0.0.1:{{port}};
  root ${docroot.path};
  location ~ \\.php$ {
    ${NGINX_FASTCGI_PARAMS}
    fastcgi_pass ${fpm.nginxAddress};
  }
}`,
      });
      const pids = [...processGroupMembers(fpm.pid), ...processGroupMembers(nginx.pid)];
      try {
        assert.equal(fpm.workerPids().length, 2);
        const res = await fetch(`${nginx.url}/hello.php`, { method: 'POST', body: 'abc' });
        assert.equal(res.status, 200);
        assert.equal(res.headers.get('x-served-by'), 'php-fpm');
        assert.equal(await res.text(), 'hello from fpm-fcgi POST abc');
        assert.equal((await fetch(`${nginx.url}/missing.php`)).status, 404);
        assert.deepEqual(nginx.errors().filter((l) => !/Primary script unknown/.test(l)), []);
      } finally {
        await nginx.stop();
        await fpm.stop();
      }
      await assertGone(pids, fpm.pid);
      await assertGone(pids, nginx.pid);
    });
  }

  test('cgi-fcgi gets the body, headers and a 404 from php-fpm', async (t) => {
    if (!requireAll(t, 'php-fpm', 'cgi-fcgi')) return;
    const fpm = await startPhpFpm({ listen: 'unix', children: 1, docroot: docroot.path });
    try {
      const params = (script: string) => ({
        REQUEST_METHOD: 'POST',
        SCRIPT_FILENAME: path.join(docroot.path, script),
        SCRIPT_NAME: `/${script}`,
        REQUEST_URI: `/${script}`,
        SERVER_PROTOCOL: 'HTTP/1.1',
        GATEWAY_INTERFACE: 'CGI/1.1',
        CONTENT_TYPE: 'text/plain',
      });
      const res = await cgiFcgiRequest({ connect: fpm.address, params: params('hello.php'), body: 'xyz' });
      assert.equal(res.status, 200);
      assert.equal(res.headers.get('x-served-by'), 'php-fpm');
      assert.equal(res.text(), 'hello from fpm-fcgi POST xyz');
      const missing = await cgiFcgiRequest({ connect: fpm.address, params: params('missing.php') });
      assert.equal(missing.status, 404);
    } finally {
      await fpm.stop();
    }
    await assert.rejects(cgiFcgiRequest({ connect: fpm.address, params: {} }), /^Error: cgi-fcgi: exited with code \d+/);
  });

  test('restart replaces the master and keeps serving on the same address', async (t) => {
    if (!requireAll(t, 'php-fpm', 'cgi-fcgi')) return;
    const fpm = await startPhpFpm({ listen: 'tcp', children: 1, docroot: docroot.path });
    const firstPid = fpm.pid;
    const firstPids = processGroupMembers(firstPid);
    const address = fpm.address;
    const params = { REQUEST_METHOD: 'GET', SCRIPT_FILENAME: path.join(docroot.path, 'hello.php') };
    try {
      assert.equal((await cgiFcgiRequest({ connect: fpm.address, params })).text(), 'hello from fpm-fcgi GET ');
      await fpm.restart();
      assert.notEqual(fpm.pid, firstPid);
      assert.equal(fpm.address, address);
      await assertGone(firstPids, firstPid);
      assert.equal((await cgiFcgiRequest({ connect: fpm.address, params })).text(), 'hello from fpm-fcgi GET ');
    } finally {
      const pids = processGroupMembers(fpm.pid);
      await fpm.stop();
      await assertGone(pids, fpm.pid);
    }
  });

  test('parseCgiOutput handles LF headers, Status and repeated headers', () => {
    const parsed = parseCgiOutput(Buffer.from('Status: 404 Not Found\nSet-Cookie: a=1\nSet-Cookie: b=2\n\nbody\n\nmore'));
    assert.equal(parsed.status, 404);
    assert.equal(parsed.statusText, 'Not Found');
    assert.deepEqual(parsed.headerList, [['Set-Cookie', 'a=1'], ['Set-Cookie', 'b=2']]);
    assert.equal(parsed.text(), 'body\n\nmore');
  });
});

describe('fcgiwrap and spawn-fcgi', () => {
  for (const via of ['direct', 'spawn-fcgi'] as const) {
    test(`fcgiwrap (${via}) serves a shell script through nginx`, async (t) => {
      if (!requireAll(t, 'nginx', 'fcgiwrap', ...(via === 'spawn-fcgi' ? ['spawn-fcgi'] : []))) return;
      const wrap = await startFcgiwrap({ via });
      const nginx = await startNginx({
        http: `server {
  listen 127.0.0.1:{{port}};
  root ${docroot.path};
  location ~ \\.sh$ {
    ${NGINX_FASTCGI_PARAMS}
    fastcgi_pass ${wrap.nginxAddress};
  }
}`,
      });
      const pids = processGroupMembers(wrap.pid);
      try {
        assert.equal(fs.statSync(wrap.socketPath!).mode & 0o777, 0o666);
        const res = await fetch(`${nginx.url}/hello.sh?x=2`);
        assert.equal(res.status, 200);
        assert.equal(res.headers.get('x-gateway'), 'CGI/1.1');
        assert.equal(await res.text(), 'hello from sh query=x=2\n');
        assert.deepEqual(nginx.errors(), []);
      } finally {
        await nginx.stop();
        await wrap.stop();
      }
      await assertGone(pids, wrap.pid);
    });
  }

  test('spawn-fcgi on TCP hands fcgiwrap its socket, and cgi-fcgi talks to it', async (t) => {
    if (!requireAll(t, 'spawn-fcgi', 'fcgiwrap', 'cgi-fcgi')) return;
    const app = await startSpawnFcgi({ command: findPeer('fcgiwrap')!, listen: 'tcp' });
    try {
      assert.match(app.address, /^127\.0\.0\.1:\d+$/);
      const res = await cgiFcgiRequest({
        connect: app.address,
        params: { REQUEST_METHOD: 'GET', SCRIPT_FILENAME: path.join(docroot.path, 'hello.sh'), QUERY_STRING: 'q', GATEWAY_INTERFACE: 'CGI/1.1' },
      });
      assert.equal(res.status, 200);
      assert.equal(res.text(), 'hello from sh query=q\n');
    } finally {
      await app.stop();
    }
    await assertGone([app.pid], app.pid);
  });
});
