// `fcgi --cgi-dir`: classic CGI scripts behind real nginx and Apache, side by side with fcgiwrap serving the same scripts behind the same nginx.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { FastCGIClient } from '../src/fastcgi/client.ts';
import { FCGI_AUTHORIZER } from '../src/fastcgi/protocol.ts';
import {
  freePort,
  makeTempDir,
  missingPeer,
  NGINX_FASTCGI_PARAMS,
  processGroupMembers,
  skipIfMissing,
  startApache,
  startFcgiwrap,
  startNginx,
  startProcess,
  stop,
  waitForPath,
  waitUntilReady,
  writeShared,
  type ApacheServer,
  type Fcgiwrap,
  type ManagedProcess,
  type NginxServer,
  type TempDir,
} from '../src/peers/index.ts';
import { eventually } from './fixtures/eventually.ts';

const repoRoot = path.resolve(import.meta.dirname, '..');
const cgiBin = path.join(repoRoot, 'cgi-bin');

// Scripts written into a fresh directory; each runs in that directory (RFC 3875 §7.2), so it can
// leave files there: pids-TAG holds "script-pid background-pid" for the process-group checks.
const scripts: Record<string, string> = {
  'status.sh': `#!/bin/sh
printf 'Status: 418 I am a teapot\\r\\nContent-Type: text/plain\\r\\nX-Script: status\\r\\n\\r\\nshort and stout\\n'
`,
  'post.sh': `#!/bin/sh
printf 'Content-Type: text/plain\\r\\n\\r\\n'
printf 'CONTENT_LENGTH=%s read=%s\\n' "$CONTENT_LENGTH" "$(wc -c | tr -d ' ')"
`,
  'redirect.sh': `#!/bin/sh
printf 'Location: /t/status.sh\\r\\n\\r\\n'
`,
  'nph-raw.sh': `#!/bin/sh
printf 'HTTP/1.1 203 Via NPH\\r\\nContent-Type: text/plain\\r\\nX-Script: nph\\r\\n\\r\\nnph body\\n'
`,
  'sleepy.sh': `#!/bin/sh
sleep 60 &
echo "$$ $!" > "pids-$QUERY_STRING"
wait
`,
  'header-first.sh': `#!/bin/sh
printf 'Content-Type: text/plain\\r\\n\\r\\n'
sleep 0.2
printf 'read=%s\\n' "$(wc -c | tr -d ' ')"
`,
  'partial.sh': `#!/bin/sh
printf 'Content-Type: text/plain\\r\\n\\r\\npartial\\n'
sleep 60 &
echo "$$ $!" > "pids-$QUERY_STRING"
wait
`,
  'answer-then-linger.sh': `#!/bin/sh
printf 'Content-Type: text/plain\\r\\n\\r\\nanswered\\n'
exec >&-
sleep 60 &
echo "$$ $!" > "pids-$QUERY_STRING"
wait
`,
  'ticking.sh': `#!/bin/sh
sleep 60 &
echo "$$ $!" > "pids-$QUERY_STRING"
printf 'Content-Type: text/plain\\r\\n\\r\\n'
line=$(head -c 8000 /dev/zero | tr '\\0' x)
while true; do echo "$line"; sleep 0.1; done
`,
  'stderr.sh': `#!/bin/sh
echo "to the log" >&2
printf 'Status: 500 Internal Server Error\\r\\nContent-Type: text/plain\\r\\n\\r\\nfailed\\n'
`,
  'countdown.sh': `#!/bin/sh
printf 'Content-Type: text/plain\\r\\n\\r\\n'
pad=$(head -c 8000 /dev/zero | tr '\\0' .)
for i in 1 2 3 4; do echo "tick $i $pad"; sleep 0.3; done
`,
  'auth.sh': `#!/bin/sh
# An Authorizer: 200 lets the request through, with Variable-* passed on; anything else is the answer.
got=$(wc -c | tr -d ' ')
if [ "$HTTP_AUTHORIZATION" = "Bearer let-me-in" ]; then
  printf 'Status: 200 OK\\r\\nVariable-AUTH_USER: alice\\r\\nVariable-STDIN-BYTES: %s\\r\\n\\r\\n' "$got"
else
  printf 'Status: 403 Forbidden\\r\\nContent-Type: text/plain\\r\\n\\r\\nrole=%s\\n' "$FCGI_ROLE"
fi
`,
};

let root: TempDir;
let scriptDir: string;
let repoResponder: ManagedProcess | undefined;
let testResponder: ManagedProcess | undefined;
let repoSocket: string;
let testSocket: string;
let fcgiwrap: Fcgiwrap | undefined;
let nginx: NginxServer | undefined;
let wrapPort: number;
let apache: ApacheServer | undefined;
let missing: string | undefined;

async function startCgiDir(dir: string, socketPath: string, extra: string[] = []): Promise<ManagedProcess> {
  const proc = await startProcess({
    name: 'cgi-runner fcgi --cgi-dir',
    command: process.execPath,
    args: ['--import', 'tsx', path.join(repoRoot, 'src/cli.ts'), 'fcgi', '--listen', socketPath, '--socket-mode', '0666', '--cgi-dir', dir, '--no-access-log', ...extra],
    cwd: repoRoot,
    // Must not reach any script: scripts get a clean environment.
    env: { ...process.env, RUNNER_SECRET: 'leaked' },
  });
  await waitUntilReady(proc, (signal) => waitForPath(socketPath, 20_000, signal));
  return proc;
}

/** nginx locations serving /cgi-bin/ (the repository's scripts) and /t/ (the test scripts). */
function locations(repoPass: string, testPass: string): string {
  return `
  location /cgi-bin/ {
    root ${repoRoot};
    fastcgi_split_path_info ^(/cgi-bin/[^/]+)(/.*)$;
    ${NGINX_FASTCGI_PARAMS}
    fastcgi_param PATH_INFO $fastcgi_path_info;
    fastcgi_pass ${repoPass};
  }
  location /t/ {
    fastcgi_split_path_info ^/t(/[^/]+)(/.*)?$;
    include /etc/nginx/fastcgi_params;
    fastcgi_param SCRIPT_FILENAME ${scriptDir}$fastcgi_script_name;
    fastcgi_param PATH_INFO $fastcgi_path_info;
    fastcgi_pass ${testPass};
  }
  location / { return 404; }`;
}

before(async () => {
  missing = missingPeer(['nginx', 'apache2', 'fcgiwrap', 'mod_proxy_fcgi']);
  if (missing) return;
  root = await makeTempDir('fcgi-cgi-dir-');
  scriptDir = path.join(root.path, 'scripts');
  fs.mkdirSync(scriptDir, { mode: 0o755 });
  for (const [name, body] of Object.entries(scripts)) await writeShared(path.join(scriptDir, name), body, 0o755);
  // A script outside the directory that must never run, and a symlink to it from inside.
  await writeShared(path.join(root.path, 'outside.sh'), `#!/bin/sh\ntouch ${root.path}/RAN-OUTSIDE\nprintf 'Content-Type: text/plain\\r\\n\\r\\nSECRET\\n'\n`, 0o755);
  fs.symlinkSync('../outside.sh', path.join(scriptDir, 'link.sh'));
  repoSocket = path.join(root.path, 'repo.sock');
  testSocket = path.join(root.path, 'test.sock');
  [repoResponder, testResponder, fcgiwrap] = await Promise.all([
    startCgiDir(cgiBin, repoSocket),
    // Long enough that the disconnect tests below prove the disconnect, not the timeout, ended the script.
    startCgiDir(scriptDir, testSocket, ['--cgi-timeout', '4']),
    // fcgiwrap passes on its own environment: give it the same PATH and nothing else.
    startFcgiwrap({ env: { PATH: process.env.PATH } }),
  ]);
  wrapPort = await freePort();
  nginx = await startNginx({
    http: `
server {
  listen 127.0.0.1:{{port}};
  ${locations(`unix:${repoSocket}`, `unix:${testSocket}`)}
  # Whatever the request says: SCRIPT_FILENAME from the query (?f=...), raw, as a broken or hostile config could send it.
  location /attack-file {
    include /etc/nginx/fastcgi_params;
    fastcgi_param SCRIPT_FILENAME $arg_f;
    fastcgi_pass unix:${testSocket};
  }
  # No SCRIPT_FILENAME: DOCUMENT_ROOT + SCRIPT_NAME, with SCRIPT_NAME from the query (?n=...).
  location /attack-name {
    fastcgi_param REQUEST_METHOD $request_method;
    fastcgi_param QUERY_STRING "";
    fastcgi_param REQUEST_URI $request_uri;
    fastcgi_param DOCUMENT_ROOT ${scriptDir};
    fastcgi_param SCRIPT_NAME $arg_n;
    fastcgi_pass unix:${testSocket};
  }
}
server {
  listen 127.0.0.1:${wrapPort};
  ${locations(fcgiwrap.nginxAddress, fcgiwrap.nginxAddress)}
}`,
  });
  apache = await startApache({
    modules: ['proxy', 'proxy_fcgi'],
    config: `
ProxyPass "/cgi-bin/" "unix:${repoSocket}|fcgi://localhost${cgiBin}/"
ProxyPass "/t/" "unix:${testSocket}|fcgi://localhost${scriptDir}/"
<Location "/attack-file/">
  SetHandler "proxy:unix:${testSocket}|fcgi://localhost/"
  ProxyFCGISetEnvIf "true" SCRIPT_FILENAME "%{QUERY_STRING}"
</Location>
<Location "/attack-name/">
  SetHandler "proxy:unix:${testSocket}|fcgi://localhost/"
  ProxyFCGISetEnvIf "true" !SCRIPT_FILENAME
  ProxyFCGISetEnvIf "true" DOCUMENT_ROOT "${scriptDir}"
  ProxyFCGISetEnvIf "true" SCRIPT_NAME "%{QUERY_STRING}"
</Location>
`,
  });
});

after(async () => {
  await Promise.all([nginx?.stop(), apache?.stop()]);
  await Promise.all([repoResponder && stop(repoResponder), testResponder && stop(testResponder), fcgiwrap?.stop()]);
  await root?.cleanup();
});


interface Answer {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: string;
}

/** One request with exactly these headers (besides Host and Connection), so the environment is predictable. */
function request(port: number, target: string, options: { method?: string; headers?: Record<string, string>; body?: Buffer } = {}): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, path: target, method: options.method ?? 'GET', headers: { host: 'cgi.test', ...options.headers }, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body: Buffer.concat(chunks).toString('utf8') }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(options.body);
  });
}

/** env.pl's output as a map, plus its argv and cwd lines. */
function parseEnv(body: string): { vars: Map<string, string>; argv: string; cwd: string } {
  const [envPart, rest = ''] = body.split('\n\n');
  const vars = new Map<string, string>();
  for (const line of envPart!.split('\n')) {
    const eq = line.indexOf('=');
    if (eq > 0) vars.set(line.slice(0, eq), line.slice(eq + 1));
  }
  return { vars, argv: /^argv: ?(.*)$/m.exec(rest)?.[1] ?? '', cwd: /^cwd: (.*)$/m.exec(rest)?.[1] ?? '' };
}

/** The script's process group has no live member left. */
async function groupGone(tag: string, timeoutMs = 6000): Promise<void> {
  const file = path.join(scriptDir, `pids-${tag}`);
  const deadline = Date.now() + timeoutMs;
  while (!fs.existsSync(file) || fs.readFileSync(file, 'utf8').trim().split(' ').length < 2) {
    if (Date.now() > deadline) assert.fail(`the script never wrote ${file}`);
    await sleep(20);
  }
  const [script, background] = fs.readFileSync(file, 'utf8').trim().split(' ').map(Number);
  while (processGroupMembers(script!).length > 0) {
    if (Date.now() > deadline) {
      process.kill(-script!, 'SIGKILL');
      assert.fail(`process group ${script} (background child ${background}) still has members: ${processGroupMembers(script!)}`);
    }
    await sleep(50);
  }
}

const envHeaders = { 'x-custom': 'yes', proxy: 'http://evil.test:3128', authorization: 'Basic Zm9vOmJhcg==', cookie: 'a=1' };
const envTarget = '/cgi-bin/env.pl/some%20path/x?a=1&b=%20';

describe('the environment table', () => {
  test('behind nginx: exactly the variables nginx sends, with PATH and FCGI_ROLE, minus Proxy and Authorization', async (t) => {
    if (skipIfMissing(t, missing)) return;
    const answer = await request(nginx!.port!, envTarget, { headers: envHeaders });
    assert.equal(answer.status, 200);
    const { vars, argv, cwd } = parseEnv(answer.body);
    assert.deepEqual(Object.fromEntries(vars), {
      CONTENT_LENGTH: '',
      CONTENT_TYPE: '',
      DOCUMENT_ROOT: repoRoot,
      DOCUMENT_URI: '/cgi-bin/env.pl/some path/x',
      FCGI_ROLE: 'RESPONDER',
      GATEWAY_INTERFACE: 'CGI/1.1',
      HTTP_CONNECTION: 'close',
      HTTP_COOKIE: 'a=1',
      HTTP_HOST: 'cgi.test',
      HTTP_X_CUSTOM: 'yes',
      PATH: process.env.PATH,
      PATH_INFO: '/some path/x',
      QUERY_STRING: 'a=1&b=%20',
      REDIRECT_STATUS: '200',
      REMOTE_ADDR: '127.0.0.1',
      REMOTE_PORT: vars.get('REMOTE_PORT'),
      REMOTE_USER: 'foo',
      REQUEST_METHOD: 'GET',
      REQUEST_SCHEME: 'http',
      REQUEST_URI: envTarget,
      SCRIPT_FILENAME: path.join(cgiBin, 'env.pl'),
      SCRIPT_NAME: '/cgi-bin/env.pl',
      SERVER_ADDR: '127.0.0.1',
      SERVER_NAME: '',
      SERVER_PORT: String(nginx!.port),
      SERVER_PROTOCOL: 'HTTP/1.1',
      SERVER_SOFTWARE: vars.get('SERVER_SOFTWARE'),
    });
    assert.match(vars.get('SERVER_SOFTWARE')!, /^nginx\//);
    assert.equal(argv, '');
    assert.equal(cwd, cgiBin, 'the script runs in its own directory');
  });

  test('behind Apache: the proxy:fcgi:// prefix is stripped from SCRIPT_FILENAME and PATH_INFO found by walking it', async (t) => {
    if (skipIfMissing(t, missing)) return;
    const answer = await request(apache!.port, envTarget, { headers: envHeaders });
    assert.equal(answer.status, 200);
    const { vars, cwd } = parseEnv(answer.body);
    assert.equal(vars.get('SCRIPT_FILENAME'), path.join(cgiBin, 'env.pl'));
    assert.equal(vars.get('SCRIPT_NAME'), '/cgi-bin/env.pl');
    assert.equal(vars.get('PATH_INFO'), '/some path/x');
    assert.equal(vars.get('PATH_TRANSLATED'), `${apache!.documentRoot}/some path/x`);
    assert.equal(vars.get('QUERY_STRING'), 'a=1&b=%20');
    assert.equal(vars.get('REQUEST_URI'), envTarget);
    assert.equal(vars.get('GATEWAY_INTERFACE'), 'CGI/1.1');
    assert.equal(vars.get('FCGI_ROLE'), 'RESPONDER');
    assert.equal(vars.get('HTTP_X_CUSTOM'), 'yes');
    assert.equal(vars.get('HTTP_COOKIE'), 'a=1');
    // Apache (UseCanonicalName Off) takes the port from the Host header, which names none here.
    assert.equal(vars.get('SERVER_PORT'), '80');
    assert.equal(vars.get('PATH'), process.env.PATH);
    assert.equal(cwd, cgiBin);
    for (const name of ['HTTP_PROXY', 'HTTP_AUTHORIZATION', 'RUNNER_SECRET']) assert.equal(vars.has(name), false, `${name} must not reach the script`);
  });
});

describe('side by side with fcgiwrap behind the same nginx', () => {
  test('an nph- script: its status line and headers become the response, and its body follows whole', async (t) => {
    if (skipIfMissing(t, missing)) return;
    const answer = await request(nginx!.port!, '/t/nph-raw.sh');
    assert.equal(answer.status, 203);
    assert.equal(answer.headers['content-type'], 'text/plain');
    assert.equal(answer.headers['x-script'], 'nph');
    assert.equal(answer.body, 'nph body\n');
  });

  test('the same scripts give the same answers', async (t) => {
    if (skipIfMissing(t, missing)) return;
    const upload = Buffer.alloc(200_000, 'u');
    const cases: Array<{ target: string; method?: string; body?: Buffer; headers?: Record<string, string> }> = [
      { target: '/cgi-bin/hello.sh' },
      { target: '/cgi-bin/hello.mjs' },
      { target: '/cgi-bin/hello.ts' },
      { target: '/cgi-bin/env.pl/a/b?x=1', headers: { 'x-custom': 'yes', cookie: 'c=2' } },
      { target: '/t/status.sh' },
      { target: '/t/post.sh', method: 'POST', body: upload, headers: { 'content-type': 'application/octet-stream' } },
      { target: '/t/redirect.sh' },
      { target: '/t/missing.sh' },
    ];
    for (const c of cases) {
      const [ours, theirs] = await Promise.all([request(nginx!.port!, c.target, c), request(wrapPort, c.target, c)]);
      const what = `${c.method ?? 'GET'} ${c.target}`;
      // Each connection has its own ports; everything else must agree.
      const mask = (answer: Answer) => answer.body.replace(/^(REMOTE_PORT|SERVER_PORT)=.*$/gm, '$1=*');
      if (c.target === '/t/missing.sh') {
        // fcgiwrap says 403 for a missing script, we say 404: neither runs anything.
        assert.equal(ours.status, 404, what);
        assert.ok([403, 404].includes(theirs.status), what);
        continue;
      }
      assert.equal(ours.status, theirs.status, what);
      assert.equal(ours.headers['content-type'], theirs.headers['content-type'], what);
      assert.equal(ours.headers['x-script'], theirs.headers['x-script'], what);
      assert.equal(ours.headers.location?.replace(String(nginx!.port), 'PORT'), theirs.headers.location?.replace(String(wrapPort), 'PORT'), what);
      if (mask(ours) !== mask(theirs)) {
        // What the web server and the responder logged: the difference alone does not say why.
        const logs = `\n--- nginx's error log\n${nginx!.errorLog().slice(-2000)}\n--- the responder's log\n${testResponder!.stderr().slice(-2000)}`;
        assert.equal(mask(ours), mask(theirs), what + logs);
      }
    }
  });
});

describe('traversal', () => {
  // Each attempt with the status it gets: 404 for anything outside the directory (a symlink out
  // included), 403 for the directory itself.
  const attempts = (dir: string) => ({
    viaFilename: [
      [`${dir}/../outside.sh`, 404],
      [`${dir}/./../outside.sh`, 404],
      [`${dir}/%2e%2e/outside.sh`, 404],
      ['/etc/passwd', 404],
      ['outside.sh', 404],
      [`${dir}/link.sh`, 404],
      [dir, 403],
      [`proxy:fcgi://localhost${dir}/%2e%2e/outside.sh`, 404],
    ] as const,
    viaName: [
      ['/../outside.sh', 404],
      ['/./../../outside.sh', 404],
      ['/link.sh', 404],
      ['/..', 404],
    ] as const,
  });

  test('behind nginx: SCRIPT_FILENAME and DOCUMENT_ROOT + SCRIPT_NAME outside the directory get 404 (403 for the directory itself), with a STDERR line', async (t) => {
    if (skipIfMissing(t, missing)) return;
    const { viaFilename, viaName } = attempts(scriptDir);
    for (const [f, status] of viaFilename) {
      // $arg_f is not decoded: the value arrives as written here.
      const answer = await request(nginx!.port!, `/attack-file?f=${f}`);
      assert.equal(answer.status, status, `SCRIPT_FILENAME=${f}`);
      assert.doesNotMatch(answer.body, /SECRET/);
    }
    for (const [n, status] of viaName) {
      const answer = await request(nginx!.port!, `/attack-name?n=${n}`);
      assert.equal(answer.status, status, `SCRIPT_NAME=${n}`);
    }
    assert.equal(fs.existsSync(path.join(root.path, 'RAN-OUTSIDE')), false, 'the outside script never ran');
    const log = nginx!.errorLog();
    assert.match(log, new RegExp(`FastCGI sent in stderr: "fastcgi: refusing SCRIPT_FILENAME "${scriptDir}/\\.\\./outside\\.sh": outside ${scriptDir}"`));
    assert.match(log, /FastCGI sent in stderr: "fastcgi: refusing DOCUMENT_ROOT \+ SCRIPT_NAME ".*\/outside\.sh": outside /);
    // The fallback itself works: DOCUMENT_ROOT + SCRIPT_NAME, with PATH_INFO found by the walk.
    const fallback = await request(nginx!.port!, '/attack-name?n=/status.sh/more');
    assert.equal(fallback.status, 418);
  });

  test("our error lines carry the request id, the URI and the script (or the directory for a refusal)", async (t) => {
    if (skipIfMissing(t, missing)) return;
    const escape = (text: string) => text.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&');
    assert.equal((await request(nginx!.port!, '/t/stderr.sh?id=7')).status, 500);
    await eventually(() => testResponder!.stderr(), new RegExp(`stderr\\.sh: to the log \\[${escape(scriptDir)}/stderr\\.sh, request \\d+, uri=/t/stderr\\.sh\\?id=7\\]`));
    assert.equal((await request(nginx!.port!, '/attack-file?f=../outside.sh')).status, 404);
    await eventually(() => testResponder!.stderr(), new RegExp(`fastcgi: refusing SCRIPT_FILENAME .*outside\\.sh.* \\[${escape(scriptDir)}, request \\d+, uri=/attack-file\\?f=\\.\\./outside\\.sh\\]`));
  });

  test('behind Apache: the same attempts through ProxyFCGISetEnvIf and the URL', async (t) => {
    if (skipIfMissing(t, missing)) return;
    const { viaFilename, viaName } = attempts(scriptDir);
    for (const [f, status] of viaFilename) {
      const answer = await request(apache!.port, `/attack-file/?${f}`);
      assert.equal(answer.status, status, `SCRIPT_FILENAME=${f}`);
    }
    for (const [n, status] of viaName) {
      const answer = await request(apache!.port, `/attack-name/?${n}`);
      assert.equal(answer.status, status, `SCRIPT_NAME=${n}`);
    }
    // Through the URL: Apache refuses the encoded ones itself; the symlink reaches us and gets 404.
    for (const target of ['/t/%2e%2e/outside.sh', '/t/..%2foutside.sh', '/t/link.sh']) {
      const answer = await request(apache!.port, target);
      assert.equal(answer.status, 404, target);
    }
    assert.equal(fs.existsSync(path.join(root.path, 'RAN-OUTSIDE')), false, 'the outside script never ran');
    assert.match(apache!.errorLog(), /AH01071: Got error 'fastcgi: refusing SCRIPT_FILENAME ".*outside\.sh": outside /);
    assert.equal((await request(apache!.port, '/attack-name/?/status.sh')).status, 418);
  });
});

describe('a body behind nginx', () => {
  test('a script that prints its header before it reads a 1 MB POST gets all of it: nginx stops sending a body once it has a header, so the header waits', async (t) => {
    if (skipIfMissing(t, missing)) return;
    // More than the responder queues (256 KiB) and the sockets hold: without the wait, nginx
    // would stop half-way and the script would wait for the rest until --cgi-timeout (4 s).
    const upload = Buffer.alloc(1_000_000, 'b');
    const started = Date.now();
    const [ours, theirs] = await Promise.all(
      [nginx!.port!, wrapPort].map((port) => request(port, '/t/header-first.sh', { method: 'POST', body: upload, headers: { 'content-type': 'application/octet-stream' } })),
    );
    assert.equal(ours.status, 200);
    assert.equal(ours.body, 'read=1000000\n');
    assert.equal(theirs.body, ours.body, 'fcgiwrap, which reads the whole body first, agrees');
    assert.ok(Date.now() - started < 3000, `answered after ${Date.now() - started} ms, well before the timeout`);
  });
});

describe('timeouts and disconnects', () => {
  test('a script that runs past --cgi-timeout: 504 through nginx and Apache, and its process group is killed', async (t) => {
    if (skipIfMissing(t, missing)) return;
    const started = Date.now();
    const [viaNginx, viaApache, partial, head, headOpen] = await Promise.all([
      request(nginx!.port!, '/t/sleepy.sh?timeout-nginx'),
      request(apache!.port, '/t/sleepy.sh?timeout-apache'),
      request(nginx!.port!, '/t/partial.sh?timeout-partial'),
      request(nginx!.port!, '/t/answer-then-linger.sh?timeout-head', { method: 'HEAD' }),
      // A HEAD to a script that keeps its stdout open: the head was sent, the body is not wanted.
      request(nginx!.port!, '/t/partial.sh?timeout-head-open', { method: 'HEAD' }),
    ]);
    assert.equal(viaNginx.status, 504);
    assert.equal(viaApache.status, 504);
    // After some output, the response is cut and only the log can say why.
    assert.equal(partial.status, 200);
    assert.match(partial.body.toString(), /^partial\n/);
    assert.ok(Date.now() - started < 8000);
    // A script that answered in full and lingered: nothing to cut, and its kill is logged as such.
    assert.equal(head.status, 200);
    assert.equal(headOpen.status, 200);
    await Promise.all([groupGone('timeout-nginx'), groupGone('timeout-apache'), groupGone('timeout-partial'), groupGone('timeout-head'), groupGone('timeout-head-open')]);
    assert.match(nginx!.errorLog(), /FastCGI sent in stderr: "fastcgi: sleepy\.sh: the script ran longer than 4 s"/);
    // (The responder reports a body that breaks off: "app: " and the reason, once.)
    assert.match(nginx!.errorLog(), /FastCGI sent in stderr: "app: cgi: the script ran longer than 4 s" while reading upstream/);
    await eventually(() => testResponder!.stderr(), /cgi: the script ran longer than 4 s after its response was complete; it was killed \[[^\]]*answer-then-linger\.sh, request \d+, uri=\/t\/answer-then-linger\.sh\?timeout-head\]/);
    await eventually(() => testResponder!.stderr(), /cgi: the script ran longer than 4 s after its response was sent without its body; it was killed \[[^\]]*partial\.sh, request \d+, uri=\/t\/partial\.sh\?timeout-head-open\]/);
    assert.doesNotMatch(testResponder!.stderr(), /cut short/);
  });

  test('output streams: the first lines reach the client through nginx and Apache while the script still runs', async (t) => {
    if (skipIfMissing(t, missing)) return;
    const timed = (port: number) =>
      new Promise<{ firstAt: number; endAt: number; body: string }>((resolve, reject) => {
        const started = Date.now();
        let firstAt = 0;
        let body = '';
        http.get({ host: '127.0.0.1', port, path: '/t/countdown.sh', headers: { host: 'cgi.test' }, agent: false }, (res) => {
          res.setEncoding('latin1');
          res.on('data', (chunk: string) => {
            if (!firstAt && chunk.includes('tick 1')) firstAt = Date.now() - started;
            body += chunk;
          });
          res.on('end', () => resolve({ firstAt, endAt: Date.now() - started, body }));
        }).on('error', reject);
      });
    for (const [front, port] of [['nginx', nginx!.port!], ['Apache', apache!.port]] as const) {
      const r = await timed(port);
      assert.equal(r.body.match(/tick \d/g)?.join(' '), 'tick 1 tick 2 tick 3 tick 4', front);
      // The script takes 1.2 s; the first tick is written at once.
      assert.ok(r.endAt - r.firstAt >= 600, `${front}: the first tick came at ${r.firstAt} ms, the end at ${r.endAt} ms`);
    }
  });

  test('a client that goes away: nginx closes the connection, and the script and its background child are killed', async (t) => {
    if (skipIfMissing(t, missing)) return;
    const socket = net.connect(nginx!.port!, '127.0.0.1');
    socket.write('GET /t/sleepy.sh?gone-nginx HTTP/1.1\r\nHost: cgi.test\r\n\r\n');
    const file = path.join(scriptDir, 'pids-gone-nginx');
    while (!fs.existsSync(file)) await sleep(20);
    socket.destroy();
    // Well before --cgi-timeout (4 s) would have done it.
    await groupGone('gone-nginx', 900);
  });

  test('a client that goes away behind Apache: killed once Apache fails to write to it', async (t) => {
    if (skipIfMissing(t, missing)) return;
    const socket = net.connect(apache!.port, '127.0.0.1');
    socket.on('error', () => {});
    socket.write('GET /t/ticking.sh?gone-apache HTTP/1.1\r\nHost: cgi.test\r\n\r\n');
    const file = path.join(scriptDir, 'pids-gone-apache');
    while (!fs.existsSync(file)) await sleep(20);
    const left = Date.now();
    socket.destroy();
    await groupGone('gone-apache', 3000);
    t.diagnostic(`the script's group was gone ${Date.now() - left} ms after the client left (--cgi-timeout is 4 s)`);
  });
});

describe('the Authorizer role', () => {
  test('runs the script at once with no STDIN; 200 allows with Variable-* headers, anything else is the answer', async (t) => {
    if (skipIfMissing(t, missing)) return;
    const client = new FastCGIClient({ address: testSocket });
    try {
      const params = (authorization: string) => ({
        SCRIPT_FILENAME: path.join(scriptDir, 'auth.sh'),
        REQUEST_METHOD: 'POST',
        CONTENT_LENGTH: '10',
        REQUEST_URI: '/protected/thing',
        HTTP_AUTHORIZATION: authorization,
      });
      const allowed = await client.request({ params: params('Bearer let-me-in'), role: FCGI_AUTHORIZER });
      const allowedBody = await new Promise<string>((resolve) => {
        let s = '';
        allowed.body.on('data', (c) => (s += c)).on('end', () => resolve(s));
      });
      assert.equal(allowed.status, 200);
      assert.deepEqual(
        allowed.headers.filter(([name]) => name.toLowerCase().startsWith('variable-')),
        [
          ['Variable-AUTH_USER', 'alice'],
          ['Variable-STDIN-BYTES', '0'],
        ],
      );
      assert.equal(allowedBody, '');
      const denied = await client.request({ params: params('Bearer nope'), role: FCGI_AUTHORIZER });
      let deniedBody = '';
      for await (const chunk of denied.body) deniedBody += chunk;
      assert.equal(denied.status, 403);
      assert.equal(deniedBody, 'role=AUTHORIZER\n');
    } finally {
      client.close();
    }
  });
});
