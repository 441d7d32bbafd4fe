// The CGI header-block parser on its own (src/cgi/response.ts): any split of the same bytes gives the same head, and the limits and classifications hold.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { CgiHeadParser, CgiResponseError, type CgiHead } from '../src/cgi/response.ts';

function parseIn(pieces: Buffer[], options: ConstructorParameters<typeof CgiHeadParser>[0] = {}): { head: CgiHead; rest: Buffer } {
  const parser = new CgiHeadParser(options);
  for (let i = 0; i < pieces.length; i++) {
    const result = parser.push(pieces[i]!);
    if (result) return { head: result.head, rest: Buffer.concat([result.rest, ...pieces.slice(i + 1)]) };
  }
  throw parser.end();
}

const output = Buffer.from('Status: 201 Created\r\nContent-Type: text/plain\nX-Multi: a\r\nX-Multi: b\r\n\r\nbody\r\n\r\nmore');

describe('CGI header-block parser', () => {
  test('every split of the output gives the same head and body', () => {
    const whole = parseIn([output]);
    assert.equal(whole.head.status, 201);
    assert.equal(whole.head.reason, 'Created');
    assert.deepEqual(whole.head.headers, [['Content-Type', 'text/plain'], ['X-Multi', 'a'], ['X-Multi', 'b']]);
    assert.equal(whole.rest.toString(), 'body\r\n\r\nmore');
    for (let cut = 1; cut < output.length; cut++) {
      const split = parseIn([output.subarray(0, cut), output.subarray(cut)]);
      assert.deepEqual(split.head, whole.head, `cut at ${cut}`);
      assert.equal(split.rest.toString(), 'body\r\n\r\nmore', `cut at ${cut}`);
    }
    const bytes = parseIn([...output].map((b) => Buffer.from([b])));
    assert.deepEqual(bytes.head, whole.head);
    assert.equal(bytes.rest.toString(), 'body\r\n\r\nmore');
  });

  test('LF-only line ends', () => {
    const { head, rest } = parseIn([Buffer.from('content-type: text/html\n\n<p>')]);
    assert.equal(head.status, 200);
    assert.equal(head.kind, 'document');
    assert.equal(rest.toString(), '<p>');
  });

  test('Location classification (RFC 3875 §6.2)', () => {
    const kind = (text: string) => parseIn([Buffer.from(text)]).head;
    assert.equal(kind('Location: /a?b\n\n').kind, 'local-redirect');
    const absolute = kind('Location: http://x/\n\n');
    assert.deepEqual([absolute.kind, absolute.status], ['client-redirect', 302]);
    assert.equal(kind('Location: //x/\n\n').kind, 'client-redirect');
    const withStatus = kind('Status: 303 See Other\nLocation: /a\n\n');
    assert.deepEqual([withStatus.kind, withStatus.status], ['client-redirect', 303]);
    assert.equal(kind('Location: /a\nContent-Type: text/plain\n\n').kind, 'client-redirect');
  });

  test('Content-Length is kept only when it is one valid number', () => {
    assert.equal(parseIn([Buffer.from('Content-Length: 12\n\n')]).head.contentLength, 12);
    assert.equal(parseIn([Buffer.from('Content-Length: 1x\n\n')]).head.contentLength, undefined);
    assert.equal(parseIn([Buffer.from('Content-Length: 1\nContent-Length: 1\n\n')]).head.contentLength, undefined);
  });

  test('an nph- status line', () => {
    const { head } = parseIn([Buffer.from('HTTP/1.1 404 Nope\r\nX: y\r\n\r\n')], { nph: true });
    assert.deepEqual([head.status, head.reason, head.nph], [404, 'Nope', true]);
    assert.equal(head.raw.toString(), 'HTTP/1.1 404 Nope\r\nX: y\r\n\r\n');
  });

  for (const [name, text, reason] of [
    ['no headers at all', '\r\nbody', /header block is empty/],
    ['a line without a colon', 'Content-Type text/plain\n\n', /malformed header line/],
    ['a name with a space', 'Content Type: x\n\n', /malformed header line/],
    ['a folded line', 'A: b\n c\n\n', /line folding/],
    ['a control character', 'A: b\x01c\n\n', /control character/],
    ['two Status fields', 'Status: 200\nStatus: 404\n\n', /more than one Status/],
    ['a 1xx Status', 'Status: 100 Continue\n\n', /invalid Status/],
    ['two Locations', 'Location: /a\nLocation: /b\n\n', /more than one Location/],
  ] as const) {
    test(`rejects ${name}`, () => {
      assert.throws(() => parseIn([Buffer.from(text)]), (err: Error) => err instanceof CgiResponseError && reason.test(err.message));
    });
  }

  test('the header block size limit holds while it is incomplete', () => {
    const parser = new CgiHeadParser({ maxHeaderBytes: 100 });
    assert.equal(parser.push(Buffer.from('X-A: ' + 'a'.repeat(60))), undefined);
    assert.throws(() => parser.push(Buffer.from('b'.repeat(60))), /larger than 100 bytes/);
  });

  test('output that ends early', () => {
    assert.match(new CgiHeadParser().end().message, /wrote no output/);
    const parser = new CgiHeadParser();
    parser.push(Buffer.from('Content-Type: x\n'));
    assert.match(parser.end().message, /ended inside the header block/);
  });
});
