// The Request an app gets: the URL rebuilt from CGI/FastCGI params (as Go's net/http/cgi tests its
// request builder, one row per case), headers from HTTP_*, and nothing built before the app asks.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { createLazyRequest, requestHeaders, requestUrl } from '../src/handler.ts';

describe('requestUrl', () => {
  const cases: [name: string, params: Record<string, string>, url: string][] = [
    ['almost no params', {}, 'http://localhost/'],
    ['REQUEST_URI and HTTP_HOST', { HTTP_HOST: 'example.com', REQUEST_URI: '/a/b?x=1&y=2' }, 'http://example.com/a/b?x=1&y=2'],
    ['HTTPS=on', { HTTPS: 'on', HTTP_HOST: 'example.com', REQUEST_URI: '/' }, 'https://example.com/'],
    ['HTTPS=off (IIS) is plain http', { HTTPS: 'off', REQUEST_SCHEME: 'https', HTTP_HOST: 'example.com', REQUEST_URI: '/' }, 'http://example.com/'],
    ['REQUEST_SCHEME without HTTPS', { REQUEST_SCHEME: 'https', HTTP_HOST: 'example.com', REQUEST_URI: '/' }, 'https://example.com/'],
    ['no HTTP_HOST: SERVER_NAME and SERVER_PORT', { SERVER_NAME: 'srv.test', SERVER_PORT: '8080', REQUEST_URI: '/p' }, 'http://srv.test:8080/p'],
    ['the default port is left out', { SERVER_NAME: 'srv.test', SERVER_PORT: '80', REQUEST_URI: '/p' }, 'http://srv.test/p'],
    ['the default https port is left out', { HTTPS: 'on', SERVER_NAME: 'srv.test', SERVER_PORT: '443', REQUEST_URI: '/p' }, 'https://srv.test/p'],
    ['a host that is not a host falls back to SERVER_NAME', { HTTP_HOST: 'bad host/x', SERVER_NAME: 'srv.test', SERVER_PORT: '80', REQUEST_URI: '/' }, 'http://srv.test/'],
    ['a bracketed IPv6 host keeps its port', { HTTP_HOST: '[::1]:9000', REQUEST_URI: '/' }, 'http://[::1]:9000/'],
    ['no REQUEST_URI: SCRIPT_NAME + PATH_INFO + ? + QUERY_STRING', { HTTP_HOST: 'h', SCRIPT_NAME: '/cgi-bin/app', PATH_INFO: '/x/y', QUERY_STRING: 'q=1' }, 'http://h/cgi-bin/app/x/y?q=1'],
    ['no REQUEST_URI and an empty query: no "?"', { HTTP_HOST: 'h', SCRIPT_NAME: '/s', QUERY_STRING: '' }, 'http://h/s'],
    ['a SCRIPT_NAME without its slash', { HTTP_HOST: 'h', SCRIPT_NAME: 'index.php' }, 'http://h/index.php'],
    ['an absolute-form REQUEST_URI keeps path and query only', { HTTP_HOST: 'h', REQUEST_URI: 'http://other.test/p?q' }, 'http://h/p?q'],
    ['a fragment is dropped', { HTTP_HOST: 'h', REQUEST_URI: '/p#frag' }, 'http://h/p'],
    ['spaces and UTF-8 are percent-encoded', { HTTP_HOST: 'h', REQUEST_URI: '/a b/é' }, 'http://h/a%20b/%C3%A9'],
  ];
  for (const [name, params, url] of cases) {
    test(name, () => {
      assert.equal(requestUrl(params), url);
      // Whatever it returns, a Request can be made from it.
      assert.equal(new Request(requestUrl(params)).url, url);
    });
  }
});

test('requestHeaders: HTTP_* become headers, CONTENT_* when set, never Proxy', () => {
  const headers = requestHeaders({
    HTTP_ACCEPT_LANGUAGE: 'en',
    HTTP_X_FORWARDED_FOR: '192.0.2.1',
    HTTP_PROXY: 'http://evil.test',
    CONTENT_TYPE: 'text/plain',
    CONTENT_LENGTH: '',
    SERVER_NAME: 'not a header',
  });
  assert.deepEqual([...headers], [
    ['accept-language', 'en'],
    ['content-type', 'text/plain'],
    ['x-forwarded-for', '192.0.2.1'],
  ]);
});

test('the Request is lazy: no param is read, no header built and no body opened until the app asks', () => {
  const read = new Set<string>();
  const params = new Proxy({ REQUEST_METHOD: 'post', REQUEST_URI: '/p?q=1', HTTP_HOST: 'h', HTTP_ACCEPT: 'text/plain', CONTENT_LENGTH: '4' } as Record<string, string>, {
    get(target, name) {
      if (typeof name === 'string') read.add(name);
      return Reflect.get(target, name);
    },
    ownKeys(target) {
      read.add('(all)');
      return Reflect.ownKeys(target);
    },
  });
  let bodyOpened = 0;
  const request = createLazyRequest({
    params,
    abort: new AbortController(),
    body: () => {
      bodyOpened++;
      return new ReadableStream({
        start(controller) {
          controller.enqueue(new TextEncoder().encode('body'));
          controller.close();
        },
      });
    },
  });
  assert.ok(request instanceof Request);
  assert.deepEqual([...read], [], 'creating it reads nothing');
  assert.equal(request.method, 'POST');
  assert.deepEqual([...read], ['REQUEST_METHOD'], 'the method reads only REQUEST_METHOD');
  assert.equal(request.url, 'http://h/p?q=1');
  assert.ok(!read.has('(all)') && !read.has('HTTP_ACCEPT'), 'the URL does not build the headers');
  assert.equal(bodyOpened, 0);
  assert.equal(request.headers.get('accept'), 'text/plain');
  assert.ok(read.has('(all)'), 'the headers walk the params once asked for');
  assert.equal(bodyOpened, 0, 'the body is opened only when read');
  return request.text().then((text) => {
    assert.equal(text, 'body');
    assert.equal(bodyOpened, 1);
  });
});
