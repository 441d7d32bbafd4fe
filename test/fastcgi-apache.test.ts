// The FastCGI responder behind a real Apache httpd: mod_proxy_fcgi (ProxyPass over TCP with enablereuse,
// SetHandler to a unix socket) and mod_authnz_fcgi calling an app in the Authorizer role.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { type ApacheServer, missingPeer, skipIfMissing, startApache } from '../src/peers/index.ts';
import { expectConcurrentAnswers, expectFailuresRecovered, expectHello, expectLargePostEchoed, expectLargeResponses, expectStreamedBody, expectOnlyAppFailuresLogged, expectPatternBody, expectTeapot, type EnvReport } from './fixtures/front-checks.ts';
import { establishedServerSide, fixtureApp, startResponder, type RunningResponder } from './fixtures/responder.ts';

let tcpApp: RunningResponder | undefined;
let unixApp: RunningResponder | undefined;
let authApp: RunningResponder | undefined;
let apache: ApacheServer | undefined;
let missing: string | undefined;

before(async () => {
  missing = missingPeer(['apache2', 'mod_proxy_fcgi', 'mod_authnz_fcgi']);
  if (missing) return;
  const kitchen = fixtureApp('kitchen.ts');
  // Apache's children run as www-data: the unix socket is created 0666 in a 0755 directory.
  [tcpApp, unixApp, authApp] = await Promise.all([
    startResponder({ app: kitchen, listen: 'tcp' }),
    startResponder({ app: kitchen, listen: 'unix', socketMode: '0666' }),
    startResponder({ app: fixtureApp('authorizer.ts'), listen: 'tcp' }),
  ]);
  apache = await startApache({
    modules: ['proxy', 'proxy_fcgi', 'authnz_fcgi', 'authn_core'],
    config: `
# One child with more threads than the 50 concurrent clients of the load test. The event MPM closes
# the idle keep-alive connections of a child whose workers are all busy (and of a child it retires),
# and a client that reuses one at that moment sees it closed without an answer.
StartServers 1
ServerLimit 1
ThreadsPerChild 64
MaxRequestWorkers 64
MinSpareThreads 1
MaxSpareThreads 128

# flushpackets=auto: pass each piece of a streamed answer on once the app pauses (httpd >= 2.4.31);
# without it mod_proxy_fcgi holds small writes until its buffer fills or the answer ends.
ProxyPass "/app/" "fcgi://${tcpApp.address}/" enablereuse=on flushpackets=auto
<Proxy "unix:${unixApp.socketPath}|fcgi://localhost/">
  ProxySet flushpackets=auto
</Proxy>
<Location "/sock/">
  SetHandler "proxy:unix:${unixApp.socketPath}|fcgi://localhost/"
</Location>

# One call in the authentication phase decides (type authnz): allow, 401 or 403.
AuthnzFcgiDefineProvider authnz AppAuthnz fcgi://${authApp.address}/
<Location "/protected/">
  AuthType Basic
  AuthName "test"
  AuthnzFcgiCheckAuthnProvider AppAuthnz Authoritative On RequireBasicAuth Off UserExpr "%{reqenv:REMOTE_USER}"
  Require AppAuthnz
  ProxyPass "fcgi://${tcpApp.address}/"
</Location>

# Separate calls: authentication (FCGI_APACHE_ROLE=AUTHENTICATOR), then a Require line (AUTHORIZER).
AuthnzFcgiDefineProvider authn AppAuthn fcgi://${authApp.address}/
AuthnzFcgiDefineProvider authz AppAuthz fcgi://${authApp.address}/
<Location "/admin/">
  AuthType Basic
  AuthName "test"
  AuthnzFcgiCheckAuthnProvider AppAuthn Authoritative On RequireBasicAuth Off UserExpr "%{reqenv:REMOTE_USER}"
  Require AppAuthz
  ProxyPass "fcgi://${tcpApp.address}/"
</Location>
`,
  });
});

after(async () => {
  await apache?.stop();
  await Promise.all([tcpApp?.stop(), unixApp?.stop(), authApp?.stop()]);
});

function errorsSince(mark: number): string[] {
  return apache!.errors().slice(mark);
}

const variants = [
  { name: 'ProxyPass fcgi://127.0.0.1:PORT/ enablereuse=on', prefix: 'app', scriptFilename: /^proxy:fcgi:\/\/127\.0\.0\.1:\d+\/env$/ },
  { name: 'SetHandler proxy:unix:SOCK|fcgi://localhost/', prefix: 'sock', scriptFilename: /^proxy:fcgi:\/\/localhost\// },
];

for (const variant of variants) {
  describe(`Apache mod_proxy_fcgi, ${variant.name}`, () => {
    const url = (path: string) => `${apache!.url}/${variant.prefix}/${path}`;

    test('GET reaches the app with the URL the client asked for', async (t) => {
      if (skipIfMissing(t, missing)) return;
      const mark = apache!.errors().length;
      await expectHello(url);
      const env = (await (await fetch(url('env?a=1&b=%20'))).json()) as EnvReport;
      assert.equal(env.role, 'responder');
      assert.match(env.params.SCRIPT_FILENAME!, variant.scriptFilename);
      assert.equal(env.params.REQUEST_URI, `/${variant.prefix}/env?a=1&b=%20`);
      assert.equal(new URL(env.url).pathname + new URL(env.url).search, `/${variant.prefix}/env?a=1&b=%20`);
      assert.deepEqual(errorsSince(mark), []);
    });

    test('a 3 MiB POST body reaches the app intact', async (t) => {
      if (skipIfMissing(t, missing)) return;
      const mark = apache!.errors().length;
      await expectLargePostEchoed(url);
      const small = (await (await fetch(url('echo'), { method: 'POST', body: 'a=1&b=2', headers: { 'content-type': 'application/x-www-form-urlencoded' } })).json()) as Record<string, unknown>;
      assert.equal(small.text, 'a=1&b=2');
      assert.deepEqual(errorsSince(mark), []);
    });

    test("the app's status line and headers reach the client, each Set-Cookie separate", async (t) => {
      if (skipIfMissing(t, missing)) return;
      const mark = apache!.errors().length;
      await expectTeapot(url);
      await expectPatternBody(url('bigstream?bytes=2000000'), 2_000_000);
      assert.deepEqual(errorsSince(mark), []);
    });

    test('an 8 MiB response arrives intact, as bytes and as a stream', async (t) => {
      if (skipIfMissing(t, missing)) return;
      const mark = apache!.errors().length;
      await expectLargeResponses(url);
      assert.deepEqual(errorsSince(mark), []);
    });

    test('a streamed body: the first chunk reaches the client while the app still holds the stream open', async (t) => {
      if (skipIfMissing(t, missing)) return;
      const mark = apache!.errors().length;
      const firstAfter = await expectStreamedBody(url, variant.prefix);
      t.diagnostic(`first chunk after ${firstAfter.toFixed(1)} ms`);
      assert.deepEqual(errorsSince(mark), []);
    });

    test('a throwing app gives a 500, and the next request succeeds', async (t) => {
      if (skipIfMissing(t, missing)) return;
      const mark = apache!.errors().length;
      await expectFailuresRecovered(url);
      // mod_proxy_fcgi logs the app's FastCGI stderr at level error; nothing else went wrong.
      expectOnlyAppFailuresLogged(errorsSince(mark), /AH01071: Got error 'app: the app failed on purpose/);
    });

    test('400 requests from 50 concurrent clients all get their own answer', async (t) => {
      if (skipIfMissing(t, missing)) return;
      const mark = apache!.errors().length;
      await expectConcurrentAnswers(url);
      if (variant.prefix === 'app') {
        // enablereuse=on sets FCGI_KEEP_CONN: the responder keeps the connections for the next requests.
        assert.ok(establishedServerSide(tcpApp!.port!).length >= 1, 'backend connections stay open for reuse');
      }
      assert.deepEqual(errorsSince(mark), []);
    });
  });
}

describe('Apache mod_authnz_fcgi with an app in the Authorizer role', () => {
  const url = (path: string) => `${apache!.url}${path}`;

  test('200 allows, and Variable-* headers reach the protected resource as variables', async (t) => {
    if (skipIfMissing(t, missing)) return;
    const mark = apache!.errors().length;
    const res = await fetch(url('/protected/env'), { headers: { 'x-token': 'alice-token' } });
    assert.equal(res.status, 200);
    const env = (await res.json()) as EnvReport;
    assert.equal(env.role, 'responder');
    assert.equal(env.params.REMOTE_USER, 'alice', 'Variable-REMOTE_USER set the user through UserExpr');
    assert.equal(env.params['X-USER'], 'alice', 'Variable-X-User passed on');
    // The authorizer got no request body; the responder behind it gets all of it.
    const post = await fetch(url('/protected/echo'), { method: 'POST', body: 'payload', headers: { 'x-token': 'bob-token' } });
    assert.equal(post.status, 200);
    assert.equal(((await post.json()) as { text: string }).text, 'payload');
    assert.deepEqual(errorsSince(mark), []);
  });

  test('401 and 403 deny, with the authorizer status, headers and body', async (t) => {
    if (skipIfMissing(t, missing)) return;
    const mark = apache!.errors().length;
    const anonymous = await fetch(url('/protected/env'));
    assert.equal(anonymous.status, 401);
    assert.equal(anonymous.headers.get('www-authenticate'), 'Bearer realm="test"');
    assert.equal(await anonymous.text(), 'who are you?\n');
    const forbidden = await fetch(url('/protected/env'), { headers: { 'x-token': 'forbidden' } });
    assert.equal(forbidden.status, 403);
    assert.equal(await forbidden.text(), 'forbidden token\n');
    assert.deepEqual(errorsSince(mark), []);
  });

  test('a Require line calls the app as AUTHORIZER with the authenticated user', async (t) => {
    if (skipIfMissing(t, missing)) return;
    const mark = apache!.errors().length;
    const alice = await fetch(url('/admin/env'), { headers: { 'x-token': 'alice-token' } });
    assert.equal(alice.status, 200);
    const env = (await alice.json()) as EnvReport;
    assert.equal(env.params.REMOTE_USER, 'alice');
    assert.equal(env.params['X-CHECKED-BY'], 'authorizer');
    // bob authenticates but the authorizer says 403: Apache answers 401 since an AuthType is set.
    const bob = await fetch(url('/admin/env'), { headers: { 'x-token': 'bob-token' } });
    assert.equal(bob.status, 401);
    await bob.arrayBuffer();
    const errors = errorsSince(mark);
    assert.equal(errors.length, 1);
    assert.match(errors[0]!, /AH01631: user bob: authorization failure for "\/admin\/env"/);
  });
});
