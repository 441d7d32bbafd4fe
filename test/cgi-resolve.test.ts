// Which file a request path runs: the longest executable prefix, and nothing outside the script directory whatever the spelling (dot segments, encoded dots and slashes, backslashes, symlinks).
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { get, rawRequest, startCgiServer, type CgiServer } from './cgi-fixture.ts';

const SECRET = `#!/bin/sh
printf 'Content-Type: text/plain\\n\\nSECRET\\n'
`;
const HELLO = `#!/bin/sh
printf 'Content-Type: text/plain\\n\\nhello %s\\n' "$PATH_INFO"
`;

describe('script resolution', () => {
  let server: CgiServer;
  let following: CgiServer;
  const scripts = {
    'hello.sh': HELLO,
    'sub/inner.sh': HELLO,
    'data.txt': { body: 'PRIVATE DATA\n', mode: 0o644 },
    'readme.sh': { body: SECRET, mode: 0o644 },
  };
  const outside = { 'secret.sh': SECRET, 'outdir/secret.sh': SECRET };
  const links = (dir: string) => {
    fs.symlinkSync('../secret.sh', path.join(dir, 'link-out.sh'));
    fs.symlinkSync('hello.sh', path.join(dir, 'link-in.sh'));
    fs.symlinkSync('../outdir', path.join(dir, 'dir-out'));
    fs.symlinkSync('sub', path.join(dir, 'dir-in'));
    fs.symlinkSync('missing.sh', path.join(dir, 'dangling.sh'));
  };
  before(async () => {
    [server, following] = await Promise.all([startCgiServer(scripts, {}, outside), startCgiServer(scripts, { followSymlinks: true }, outside)]);
    links(server.dir);
    links(following.dir);
  });
  after(async () => {
    await Promise.all([server?.close(), following?.close()]);
  });

  const traversals = [
    '/cgi-bin/../secret.sh',
    '/cgi-bin/%2e%2e/secret.sh',
    '/cgi-bin/%2E%2E/secret.sh',
    '/cgi-bin/.%2e/secret.sh',
    '/cgi-bin/%2e%2e%2fsecret.sh',
    '/cgi-bin/..%2Fsecret.sh',
    '/cgi-bin/..%5csecret.sh',
    '/cgi-bin/..%5Csecret.sh',
    '/cgi-bin/sub/..%2f..%2fsecret.sh',
    '/cgi-bin/sub/%2e%2e/%2e%2e/secret.sh',
    '/cgi-bin/%2e%2e/cgi-bin/../secret.sh',
    '/cgi-bin/%252e%252e/secret.sh',
    '/cgi-bin/hello.sh/../../secret.sh',
    '/cgi-bin/./../secret.sh',
    '/cgi-bin//..//secret.sh',
  ];
  for (const target of traversals) {
    test(`traversal ${target} reaches nothing outside`, async () => {
      const response = await get(server.port, target);
      assert.ok([400, 403, 404].includes(response.status), `${target}: status ${response.status}`);
      assert.doesNotMatch(response.body.toString(), /SECRET/);
    });
  }

  test('a raw backslash cannot climb out either', async () => {
    const response = await rawRequest(server.port, 'GET /cgi-bin/..\\secret.sh HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n', { exact: true });
    assert.ok([400, 404].includes(response.status), `status ${response.status}`);
    assert.doesNotMatch(response.body.toString(), /SECRET/);
  });

  test('a symlink to outside is refused (403)', async () => {
    const response = await get(server.port, '/cgi-bin/link-out.sh');
    assert.equal(response.status, 403);
    assert.doesNotMatch(response.body.toString(), /SECRET/);
  });

  test('a symlinked directory to outside is refused (403)', async () => {
    const response = await get(server.port, '/cgi-bin/dir-out/secret.sh');
    assert.equal(response.status, 403);
  });

  test('symlinks that stay inside work', async () => {
    assert.equal((await get(server.port, '/cgi-bin/link-in.sh/x')).body.toString(), 'hello /x\n');
    assert.equal((await get(server.port, '/cgi-bin/dir-in/inner.sh')).body.toString(), 'hello \n');
  });

  test('with --follow-symlinks, a symlink to outside runs', async () => {
    const response = await get(following.port, '/cgi-bin/link-out.sh');
    assert.equal(response.status, 200);
    assert.equal(response.body.toString(), 'SECRET\n');
    assert.equal((await get(following.port, '/cgi-bin/dir-out/secret.sh')).status, 200);
  });

  test('a dangling symlink is 404', async () => {
    assert.equal((await get(server.port, '/cgi-bin/dangling.sh')).status, 404);
  });

  test('a file without an execute bit is never run nor shown (404)', async () => {
    for (const target of ['/cgi-bin/data.txt', '/cgi-bin/readme.sh', '/cgi-bin/data.txt/more']) {
      const response = await get(server.port, target);
      assert.equal(response.status, 404, target);
      assert.doesNotMatch(response.body.toString(), /PRIVATE|SECRET/, target);
    }
  });

  test('a directory is 403', async () => {
    for (const target of ['/cgi-bin/', '/cgi-bin', '/cgi-bin/sub', '/cgi-bin/sub/', '/cgi-bin/sub/./']) {
      assert.equal((await get(server.port, target)).status, 403, target);
    }
  });

  test('a missing script is 404', async () => {
    for (const target of ['/cgi-bin/nope.sh', '/cgi-bin/nope.sh/extra', '/cgi-bin/sub/nope/deeper', '/elsewhere']) {
      assert.equal((await get(server.port, target)).status, 404, target);
    }
  });

  test('a malformed escape is 400', async () => {
    assert.equal((await get(server.port, '/cgi-bin/%zz')).status, 400);
    assert.equal((await get(server.port, '/cgi-bin/hello.sh/%')).status, 400);
  });

  test('the longest executable prefix is the script, the rest PATH_INFO', async () => {
    assert.equal((await get(server.port, '/cgi-bin/hello.sh/a/b.sh')).body.toString(), 'hello /a/b.sh\n');
    assert.equal((await get(server.port, '/cgi-bin/sub/inner.sh/c')).body.toString(), 'hello /c\n');
  });
});
