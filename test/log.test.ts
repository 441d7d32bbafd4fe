// The access log: the combined format's fields and quoting, and no line lost when the process exits.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { formatCombined } from '../src/log.ts';

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const at = Date.UTC(2026, 10, 21, 5, 6, 7);

test('combined format, as Apache writes it', () => {
  const cases: [Parameters<typeof formatCombined>[0], string][] = [
    [{ method: 'GET', uri: '/x?a=1', status: 200, bytes: 5 }, '- - - [21/Nov/2026:05:06:07 +0000] "GET /x?a=1 HTTP/1.1" 200 5 "-" "-"'],
    [{ remoteAddr: '::1', remoteUser: 'ann', method: 'HEAD', uri: '/', protocol: 'HTTP/1.0', status: 304, bytes: 0, referer: 'http://r/', userAgent: 'ua' }, '::1 - ann [21/Nov/2026:05:06:07 +0000] "HEAD / HTTP/1.0" 304 - "http://r/" "ua"'],
    // A hostile User-Agent cannot close the field or start a new line.
    [{ method: 'GET', uri: '/', status: 200, bytes: 1, userAgent: 'a" 200 1 "\n\\x' }, '- - - [21/Nov/2026:05:06:07 +0000] "GET / HTTP/1.1" 200 1 "-" "a\\" 200 1 \\"\\x0a\\\\x"'],
    // Each character that must be escaped, alone in a field (a referer of only a tab, a DEL, a quote, a backslash).
    ...(['\t', '\x7f', '"', '\\'] as const).map((c): [Parameters<typeof formatCombined>[0], string] => [
      { method: 'GET', uri: '/', status: 200, bytes: 1, referer: c },
      `- - - [21/Nov/2026:05:06:07 +0000] "GET / HTTP/1.1" 200 1 "${c === '"' || c === '\\' ? '\\' + c : '\\x' + c.charCodeAt(0).toString(16).padStart(2, '0')}" "-"`,
    ]),
  ];
  for (const [entry, line] of cases) assert.equal(formatCombined(entry, at), line);
});

test('an access line logged just before process.exit() still reaches stdout', () => {
  const script = `import { logAccess } from './src/log.ts'; logAccess({ method: 'GET', uri: '/last', status: 200, bytes: 2 }); process.exit(0);`;
  const r = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { cwd: repo, encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /^- - - \[[^\]]+\] "GET \/last HTTP\/1\.1" 200 2 "-" "-"\n$/);
});
