// Listening and upstream addresses as the flags take them: host:port, [v6]:port, a bare port, unix socket paths and fd:N.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { parseUpstreamAddress } from '../src/fastcgi/client.ts';
import { describeTarget, parseListenAddress } from '../src/listen.ts';

const cases: Array<[string, ReturnType<typeof parseListenAddress>, string]> = [
  ['127.0.0.1:9000', { kind: 'tcp', host: '127.0.0.1', port: 9000 }, '127.0.0.1:9000'],
  ['0.0.0.0:9000', { kind: 'tcp', host: '0.0.0.0', port: 9000 }, '0.0.0.0:9000'],
  ['[::1]:9000', { kind: 'tcp', host: '::1', port: 9000 }, '[::1]:9000'],
  // No host given is loopback, never every interface.
  ['9000', { kind: 'tcp', host: '127.0.0.1', port: 9000 }, '127.0.0.1:9000'],
  [':9000', { kind: 'tcp', host: '127.0.0.1', port: 9000 }, '127.0.0.1:9000'],
  ['unix:/run/app.sock', { kind: 'unix', path: '/run/app.sock' }, 'unix:/run/app.sock'],
  ['/run/app.sock', { kind: 'unix', path: '/run/app.sock' }, 'unix:/run/app.sock'],
  ['./app.sock', { kind: 'unix', path: './app.sock' }, 'unix:./app.sock'],
  ['fd:3', { kind: 'fd', fd: 3, origin: 'given' }, 'fd:3 (given)'],
];

for (const [input, want, described] of cases) {
  test(`--listen ${input}`, () => {
    const got = parseListenAddress(input);
    assert.deepEqual(got, want);
    assert.equal(describeTarget(got), described);
  });
}

test('an upstream is any of these but fd:N or port 0; anything else is refused with the address in the message', () => {
  assert.deepEqual(parseUpstreamAddress('9000'), { kind: 'tcp', host: '127.0.0.1', port: 9000 });
  assert.deepEqual(parseUpstreamAddress('unix:/run/php/php-fpm.sock'), { kind: 'unix', path: '/run/php/php-fpm.sock' });
  for (const bad of ['fd:3', 'host:0', 'no-port', 'host:99999']) assert.throws(() => parseUpstreamAddress(bad), new RegExp(`fastcgi: cannot parse upstream address "${bad}"`));
  for (const bad of ['fd:-1', 'host:99999', 'nonsense']) assert.throws(() => parseListenAddress(bad), /listen: /);
});
