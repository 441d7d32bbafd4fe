// The FastCGI responder behind a real nginx: fastcgi_pass over a unix socket and TCP with upstream keepalive
// and fastcgi_keep_conn, and a plain fastcgi_pass without keepalive (a connection per request).
import assert from 'node:assert/strict';
import net from 'node:net';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { missingPeer, NGINX_FASTCGI_PARAMS, type NginxServer, skipIfMissing, startNginx } from '../src/peers/index.ts';
import { expectConcurrentAnswers, expectFailuresRecovered, expectHello, expectLargePostEchoed, expectLargeResponses, expectStreamedBody, expectOnlyAppFailuresLogged, expectPatternBody, expectTeapot, type EnvReport } from './fixtures/front-checks.ts';
import { establishedServerSide, fixtureApp, mapConcurrent, startResponder, type RunningResponder } from './fixtures/responder.ts';
import { eventually } from './fixtures/eventually.ts';


let unixApp: RunningResponder | undefined;
let tcpApp: RunningResponder | undefined;
let noKeepApp: RunningResponder | undefined;
let nginx: NginxServer | undefined;
let missing: string | undefined;

before(async () => {
  missing = missingPeer(['nginx']);
  if (missing) return;
  const app = fixtureApp('kitchen.ts');
  [unixApp, tcpApp, noKeepApp] = await Promise.all([
    startResponder({ app, listen: 'unix' }),
    startResponder({ app, listen: 'tcp' }),
    startResponder({ app, listen: 'tcp' }),
  ]);
  nginx = await startNginx({
    http: `
upstream app_unix { server ${unixApp.nginxAddress}; keepalive 8; }
upstream app_tcp { server ${tcpApp.nginxAddress}; keepalive 8; }
server {
  listen 127.0.0.1:{{port}};
  client_max_body_size 16m;
  location /unix/ {
    ${NGINX_FASTCGI_PARAMS}
    fastcgi_keep_conn on;
    fastcgi_pass app_unix;
  }
  location /tcp/ {
    ${NGINX_FASTCGI_PARAMS}
    fastcgi_keep_conn on;
    fastcgi_pass app_tcp;
  }
  location /nokeep/ {
    ${NGINX_FASTCGI_PARAMS}
    fastcgi_pass ${noKeepApp.nginxAddress};
  }
}`,
  });
});

after(async () => {
  await nginx?.stop();
  await Promise.all([unixApp?.stop(), tcpApp?.stop(), noKeepApp?.stop()]);
});

/** Error-log lines (error and worse) written since `mark` was taken. */
function errorsSince(mark: number): string[] {
  return nginx!.errors().slice(mark);
}

for (const transport of ['unix', 'tcp'] as const) {
  describe(`nginx fastcgi_pass over ${transport} with keepalive and fastcgi_keep_conn`, () => {
    const url = (path: string) => `${nginx!.url}/${transport}/${path}`;

    test('a client that goes away: nginx drops the upstream request, and the app sees request.signal abort', async (t) => {
      if (skipIfMissing(t, missing)) return;
      const app = transport === 'unix' ? unixApp! : tcpApp!;
      const tag = `${transport}-${Date.now()}`;
      const socket = net.connect(nginx!.port!, '127.0.0.1');
      socket.on('error', () => {});
      socket.write(`GET /${transport}/wait-abort?tag=${tag} HTTP/1.1\r\nHost: x\r\n\r\n`);
      // Dropped once the request has reached the app.
      await eventually(() => app.output(), new RegExp(`kitchen: waiting ${tag}`));
      socket.destroy();
      // The app saw the abort.
      await eventually(() => app.output(), new RegExp(`kitchen: aborted ${tag}`));
      // The app is still serving the next request.
      await expectHello(url);
    });

    test('GET returns the app body and headers', async (t) => {
      if (skipIfMissing(t, missing)) return;
      const mark = nginx!.errors().length;
      await expectHello(url);
      const env = (await (await fetch(url('env?x=1'))).json()) as EnvReport;
      assert.equal(env.role, 'responder');
      assert.equal(env.params.REQUEST_URI, `/${transport}/env?x=1`);
      assert.equal(env.params.GATEWAY_INTERFACE, 'CGI/1.1');
      assert.match(env.url, new RegExp(`^http://127\\.0\\.0\\.1(:\\d+)?/${transport}/env\\?x=1$`));
      assert.deepEqual(errorsSince(mark), []);
    });

    test('a 3 MiB POST body reaches the app intact', async (t) => {
      if (skipIfMissing(t, missing)) return;
      const mark = nginx!.errors().length;
      await expectLargePostEchoed(url);
      assert.deepEqual(errorsSince(mark), []);
    });

    test('an 8 MiB response arrives intact, as bytes and as a stream', async (t) => {
      if (skipIfMissing(t, missing)) return;
      const mark = nginx!.errors().length;
      await expectLargeResponses(url);
      assert.deepEqual(errorsSince(mark), []);
    });

    test("the app's status line and headers reach the client, each Set-Cookie separate", async (t) => {
      if (skipIfMissing(t, missing)) return;
      const mark = nginx!.errors().length;
      await expectTeapot(url);
      const notFound = await fetch(url('status?code=404'));
      assert.equal(notFound.status, 404);
      assert.equal(await notFound.text(), 'status 404\n');
      assert.deepEqual(errorsSince(mark), []);
    });

    test('a streamed body: the first chunk reaches the client while the app still holds the stream open', async (t) => {
      if (skipIfMissing(t, missing)) return;
      const mark = nginx!.errors().length;
      const firstAfter = await expectStreamedBody(url, transport);
      t.diagnostic(`first chunk after ${firstAfter.toFixed(1)} ms`);
      assert.deepEqual(errorsSince(mark), []);
    });

    test('a throwing app gives a 500, and the same upstream connection serves the next request', async (t) => {
      if (skipIfMissing(t, missing)) return;
      const mark = nginx!.errors().length;
      assert.equal((await fetch(url('hello'))).status, 200);
      const before = transport === 'tcp' ? establishedServerSide(tcpApp!.port!) : [];
      await expectFailuresRecovered(url);
      if (transport === 'tcp') {
        // Requests one after another reuse nginx's cached connections: every one of them, including
        // the one that carried the 500s, is still open.
        assert.ok(before.length >= 1, 'nginx keeps an idle connection to the responder');
        const now = establishedServerSide(tcpApp!.port!);
        assert.ok(before.every((port) => now.includes(port)), `a connection was closed: before ${before}, now ${now}`);
      }
      // The only errors: the app's message, passed on as FastCGI stderr.
      expectOnlyAppFailuresLogged(errorsSince(mark), /FastCGI sent in stderr: "app: the app failed on purpose/);
    });

    test('400 requests from 50 concurrent clients all get their own answer', async (t) => {
      if (skipIfMissing(t, missing)) return;
      const mark = nginx!.errors().length;
      await expectConcurrentAnswers(url);
      if (transport === 'tcp') assert.ok(establishedServerSide(tcpApp!.port!).length >= 1, 'idle keepalive connections stay open');
      assert.deepEqual(errorsSince(mark), []);
    });
  });
}

describe('nginx fastcgi_pass without keepalive (a connection per request)', () => {
  const url = (path: string) => `${nginx!.url}/nokeep/${path}`;

  test('GET, POST, status and a 500 work, and the responder closes every connection', async (t) => {
    if (skipIfMissing(t, missing)) return;
    const mark = nginx!.errors().length;
    assert.equal(await (await fetch(url('hello'))).text(), 'hello\n');
    const report = (await (await fetch(url('echo'), { method: 'POST', body: 'abc' })).json()) as { text: string };
    assert.equal(report.text, 'abc');
    assert.equal((await fetch(url('teapot'))).status, 418);
    await expectPatternBody(url('big?bytes=1000000'), 1_000_000);
    const results = await mapConcurrent(Array.from({ length: 100 }, (_, i) => i), 20, async (i) => (await fetch(url(`id?n=${i}`))).text());
    results.forEach((text, i) => assert.equal(text, `id ${i} GET\n`));
    assert.deepEqual(errorsSince(mark), []);
    assert.equal((await fetch(url('throw'))).status, 500);
    assert.equal(await (await fetch(url('hello'))).text(), 'hello\n');
    // Without FCGI_KEEP_CONN nothing stays open once the responses are done.
    const deadline = Date.now() + 2000;
    while (establishedServerSide(noKeepApp!.port!).length > 0 && Date.now() < deadline) await sleep(20);
    assert.deepEqual(establishedServerSide(noKeepApp!.port!), []);
  });
});
