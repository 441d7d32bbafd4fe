// A Hono app, exported as is, served by the FastCGI responder behind a real nginx.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { missingPeer, NGINX_FASTCGI_PARAMS, skipIfMissing, startNginx, type NginxServer } from '../src/peers/index.ts';
import { fixtureApp, startResponder, type RunningResponder } from './fixtures/responder.ts';

let app: RunningResponder | undefined;
let nginx: NginxServer | undefined;
let missing: string | undefined;

before(async () => {
  missing = missingPeer(['nginx']);
  if (missing) return;
  app = await startResponder({ app: fixtureApp('hono.ts'), listen: 'unix' });
  nginx = await startNginx({
    http: `
upstream hono { server ${app.nginxAddress}; keepalive 4; }
server {
  listen 127.0.0.1:{{port}};
  location /hono {
    ${NGINX_FASTCGI_PARAMS}
    fastcgi_keep_conn on;
    fastcgi_pass hono;
  }
}`,
  });
});

after(async () => {
  await nginx?.stop();
  await app?.stop();
});

describe('a Hono app behind nginx', () => {
  const url = (path: string) => `${nginx!.url}/hono${path}`;

  test('routes, path params, query and c.req.header()', async (t) => {
    if (skipIfMissing(t, missing)) return;
    const mark = nginx!.errors().length;
    const root = await fetch(url(''));
    assert.equal(root.status, 200);
    assert.equal(await root.text(), 'hono root');
    const user = await fetch(url('/users/42?tab=posts'), { headers: { 'x-client': 'integration-test' } });
    assert.equal(user.status, 200);
    assert.match(user.headers.get('content-type') ?? '', /^application\/json/);
    assert.deepEqual(await user.json(), { id: '42', tab: 'posts', agent: 'integration-test', path: '/hono/users/42' });
    assert.equal(await (await fetch(url('/files/a/b/c.txt'))).text(), 'file a/b/c.txt');
    const missingRoute = await fetch(url('/nowhere'));
    assert.equal(missingRoute.status, 404);
    assert.equal(await missingRoute.text(), '404 Not Found');
    assert.deepEqual(nginx!.errors().slice(mark), []);
  });

  test('a JSON request body, a 201 with Location, and Set-Cookie headers kept apart', async (t) => {
    if (skipIfMissing(t, missing)) return;
    const mark = nginx!.errors().length;
    const item = { name: 'tea pot', tags: ['kitchen', 'ünïcødé'] };
    const res = await fetch(url('/items'), { method: 'POST', body: JSON.stringify(item), headers: { 'content-type': 'application/json' } });
    assert.equal(res.status, 201);
    assert.equal(res.headers.get('location'), '/hono/items/tea%20pot');
    assert.deepEqual(await res.json(), { created: item, contentType: 'application/json' });
    const cookies = await fetch(url('/cookies'));
    assert.deepEqual(cookies.headers.getSetCookie(), ['one=1; Path=/', 'two=2; Path=/']);
    assert.deepEqual(nginx!.errors().slice(mark), []);
  });

  test('c.env is the FastCGI context: params and role', async (t) => {
    if (skipIfMissing(t, missing)) return;
    const { serverSoftware, ...env } = (await (await fetch(url('/env?x=y'))).json()) as Record<string, string>;
    assert.deepEqual(env, { role: 'responder', requestUri: '/hono/env?x=y', scriptFilename: `${nginx!.dir}/html/hono/env` });
    assert.match(serverSoftware!, /^nginx\//);
  });

  test("the app's own error handler answers, and the next request is served", async (t) => {
    if (skipIfMissing(t, missing)) return;
    const mark = nginx!.errors().length;
    const boom = await fetch(url('/boom'));
    assert.equal(boom.status, 500);
    assert.deepEqual(await boom.json(), { error: 'hono route failed' });
    assert.equal(await (await fetch(url(''))).text(), 'hono root');
    assert.deepEqual(nginx!.errors().slice(mark), []);
  });
});
