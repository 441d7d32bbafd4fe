// The FastCGI codec: exact bytes for records and pairs, and fast-check properties over any input and any chunking.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import { RecordDecoder } from '../src/fastcgi/decoder.ts';
import { splitAt } from '../src/fuzz/check.ts';
import { decodePairs, encodePairs } from '../src/fastcgi/pairs.ts';
import {
  FCGI_BEGIN_REQUEST,
  FCGI_KEEP_CONN,
  FCGI_OVERLOADED,
  FCGI_PARAMS,
  FCGI_RESPONDER,
  FCGI_STDIN,
  FCGI_STDOUT,
  FastCGIProtocolError,
} from '../src/fastcgi/protocol.ts';
import {
  decodeBeginRequest,
  decodeEndRequest,
  encodeBeginRequest,
  encodeCompleteResponse,
  encodeEndRequest,
  encodeRecord,
  encodeStream,
  encodeUnknownType,
} from '../src/fastcgi/record.ts';

const hex = (b: Uint8Array) => Buffer.from(b).toString('hex');

function decodeAll(chunks: Buffer[]): Array<{ type: number; requestId: number; content: string }> {
  const out: Array<{ type: number; requestId: number; content: string }> = [];
  const decoder = new RecordDecoder((type, requestId, content) => out.push({ type, requestId, content: hex(content) }));
  for (const chunk of chunks) decoder.push(chunk);
  return out;
}

describe('record encoding, exact bytes', () => {
  const cases: Array<{ name: string; bytes: Buffer; want: string }> = [
    { name: 'empty STDOUT ends a stream', bytes: encodeRecord(FCGI_STDOUT, 1), want: '0106000100000000' },
    { name: 'two content bytes, six of padding', bytes: encodeRecord(FCGI_STDOUT, 1, Buffer.from('hi')), want: '0106000100020600' + '6869' + '000000000000' },
    { name: 'eight content bytes need no padding', bytes: encodeRecord(FCGI_STDIN, 0x0102, Buffer.from('abcdefgh')), want: '0105010200080000' + '6162636465666768' },
    { name: 'BEGIN_REQUEST responder keep-conn', bytes: encodeBeginRequest(1, FCGI_RESPONDER, FCGI_KEEP_CONN), want: '0101000100080000' + '0001010000000000' },
    { name: 'END_REQUEST app status and protocol status', bytes: encodeEndRequest(0x0102, 0x01020304, FCGI_OVERLOADED), want: '0103010200080000' + '0102030402000000' },
    { name: 'UNKNOWN_TYPE names the type', bytes: encodeUnknownType(42), want: '010b000000080000' + '2a00000000000000' },
    { name: 'request id 65535', bytes: encodeRecord(FCGI_STDOUT, 0xffff), want: '0106ffff00000000' },
  ];
  for (const c of cases) {
    test(c.name, () => assert.equal(hex(c.bytes), c.want));
  }

  test('65535 content bytes fit one record, padded by 1', () => {
    const out = encodeStream(FCGI_STDOUT, 1, Buffer.alloc(65535, 0x61));
    assert.equal(out.length, 8 + 65535 + 1);
    assert.equal(hex(out.subarray(0, 8)), '01060001ffff0100');
  });

  test('65536 content bytes take two records: 65535 (+1 padding) and 1 (+7 padding)', () => {
    const out = encodeStream(FCGI_STDOUT, 1, Buffer.alloc(65536, 0x61));
    assert.equal(out.length, 8 + 65535 + 1 + 8 + 1 + 7);
    assert.equal(hex(out.subarray(0, 8)), '01060001ffff0100');
    assert.equal(hex(out.subarray(65544, 65552)), '0106000100010700');
  });

  test('a record over 65535 content bytes is refused', () => {
    assert.throws(() => encodeRecord(FCGI_STDOUT, 1, Buffer.alloc(65536)), RangeError);
  });

  test('a complete small response is STDOUT, empty STDOUT and END_REQUEST in one buffer', () => {
    const out = encodeCompleteResponse(3, 'Status: 200 OK\r\n\r\n', 'hi');
    assert.equal(
      hex(out),
      '0106000300140400' + hex(Buffer.from('Status: 200 OK\r\n\r\nhi')) + '00000000' + '0106000300000000' + '0103000300080000' + '0000000000000000',
    );
  });

  test('a complete response over 65535 bytes is split and still ends properly', () => {
    const body = Buffer.alloc(70000, 0x62);
    const records = decodeAll([encodeCompleteResponse(1, 'Status: 200 OK\r\n\r\n', body)]);
    assert.deepEqual(records.map((r) => [r.type, r.content.length / 2]), [[6, 65535], [6, 70018 - 65535], [6, 0], [3, 8]]);
  });

  test('BEGIN_REQUEST and END_REQUEST bodies decode', () => {
    assert.deepEqual(decodeBeginRequest(Buffer.from('0002010000000000', 'hex')), { role: 2, flags: 1 });
    assert.deepEqual(decodeEndRequest(Buffer.from('0000000103000000', 'hex')), { appStatus: 1, protocolStatus: 3 });
    assert.throws(() => decodeBeginRequest(Buffer.alloc(7)), FastCGIProtocolError);
  });
});

describe('name-value pairs, exact bytes', () => {
  const cases: Array<{ name: string; pairs: Array<[string, string]>; want: string }> = [
    { name: 'short name and value use 1-byte lengths', pairs: [['A', 'bc']], want: '0102' + '41' + '6263' },
    { name: 'empty value', pairs: [['X', '']], want: '0100' + '58' },
    { name: '127 bytes is still a 1-byte length', pairs: [['N', 'v'.repeat(127)]], want: '017f' + '4e' + '76'.repeat(127) },
    { name: '128 bytes takes a 4-byte length with the high bit set', pairs: [['N', 'v'.repeat(128)]], want: '0180000080' + '4e' + '76'.repeat(128) },
    { name: 'a 128-byte name', pairs: [['n'.repeat(128), '']], want: '8000008000' + '6e'.repeat(128) },
    { name: 'UTF-8 value', pairs: [['P', 'é']], want: '0102' + '50' + 'c3a9' },
  ];
  for (const c of cases) {
    test(c.name, () => {
      assert.equal(hex(encodePairs(c.pairs)), c.want);
      assert.deepEqual(decodePairs(Buffer.from(c.want, 'hex')), Object.fromEntries(c.pairs));
    });
  }

  test('a truncated pair is the codec error, not a crash', () => {
    assert.throws(() => decodePairs(Buffer.from('0105' + '41' + '6263', 'hex')), FastCGIProtocolError);
    assert.throws(() => decodePairs(Buffer.from('80', 'hex')), FastCGIProtocolError);
    assert.throws(() => decodePairs(Buffer.from('01', 'hex')), FastCGIProtocolError);
  });

  test('an absurd 4-byte length (2^31-1) is refused without allocating it', () => {
    assert.throws(() => decodePairs(Buffer.from('7fffffffff' + '00', 'hex')), FastCGIProtocolError);
    assert.throws(() => decodePairs(Buffer.from('01ffffffff41', 'hex')), /overruns/);
  });

  test('a repeated name keeps the last value; __proto__ is just a name', () => {
    const params = decodePairs(encodePairs([['A', '1'], ['A', '2'], ['__proto__', 'x']]));
    assert.equal(params.A, '2');
    assert.equal(Object.getPrototypeOf(params), Object.prototype);
    assert.equal(Object.getOwnPropertyDescriptor(params, '__proto__')?.value, 'x');
  });
});

describe('streaming decoder', () => {
  test('decodes records fed one byte at a time', () => {
    const bytes = Buffer.concat([encodeBeginRequest(1, FCGI_RESPONDER, 0), encodeRecord(FCGI_PARAMS, 1, Buffer.from('0102416263', 'hex')), encodeRecord(FCGI_PARAMS, 1)]);
    const oneByOne = decodeAll([...bytes].map((b) => Buffer.from([b])));
    assert.deepEqual(oneByOne, decodeAll([bytes]));
    assert.deepEqual(oneByOne, [
      { type: FCGI_BEGIN_REQUEST, requestId: 1, content: '0001000000000000' },
      { type: FCGI_PARAMS, requestId: 1, content: '0102416263' },
      { type: FCGI_PARAMS, requestId: 1, content: '' },
    ]);
  });

  test('a pair straddling two PARAMS records decodes once the stream is joined', () => {
    const pairs = encodePairs([['SCRIPT_NAME', '/index.php'], ['QUERY_STRING', 'a=b']]);
    const bytes = Buffer.concat([encodeRecord(FCGI_PARAMS, 1, pairs.subarray(0, 5)), encodeRecord(FCGI_PARAMS, 1, pairs.subarray(5)), encodeRecord(FCGI_PARAMS, 1)]);
    const content = decodeAll([bytes]).map((r) => Buffer.from(r.content, 'hex'));
    assert.deepEqual(decodePairs(Buffer.concat(content)), { SCRIPT_NAME: '/index.php', QUERY_STRING: 'a=b' });
  });

  test('a version other than 1 is the codec error', () => {
    assert.throws(() => decodeAll([Buffer.from('0206000100000000', 'hex')]), FastCGIProtocolError);
    assert.throws(() => decodeAll([Buffer.from('0006000100000000', 'hex')]), /unsupported version 0/);
  });

  test('padding is skipped even when it arrives alone', () => {
    const bytes = encodeRecord(FCGI_STDOUT, 1, Buffer.from('x'));
    const records = decodeAll([bytes.subarray(0, 9), bytes.subarray(9, 12), bytes.subarray(12), encodeRecord(FCGI_STDOUT, 1)]);
    assert.deepEqual(records.map((r) => r.content), ['78', '']);
  });
});

const recordArb = fc.record({
  type: fc.integer({ min: 1, max: 255 }),
  requestId: fc.integer({ min: 0, max: 0xffff }),
  content: fc.uint8Array({ maxLength: 300 }).map((a) => Buffer.from(a)),
});

describe('properties', () => {
  test('decode(encode(records)) = records', () => {
    fc.assert(
      fc.property(fc.array(recordArb, { maxLength: 20 }), (records) => {
        const bytes = Buffer.concat(records.map((r) => encodeRecord(r.type, r.requestId, r.content)));
        assert.deepEqual(decodeAll([bytes]), records.map((r) => ({ type: r.type, requestId: r.requestId, content: hex(r.content) })));
      }),
    );
  });

  test('every chunking of the same bytes yields the same records', () => {
    fc.assert(
      fc.property(fc.array(recordArb, { maxLength: 12 }), fc.array(fc.nat(), { maxLength: 40 }), (records, cuts) => {
        const bytes = Buffer.concat(records.map((r) => encodeRecord(r.type, r.requestId, r.content)));
        assert.deepEqual(decodeAll(splitAt(bytes, cuts)), decodeAll([bytes]));
      }),
    );
  });

  test('large streams split into records and rejoin, in any chunking', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 200_000 }), fc.array(fc.nat(), { maxLength: 10 }), (length, cuts) => {
        const content = Buffer.alloc(length, 7);
        const bytes = Buffer.concat([encodeStream(FCGI_STDOUT, 9, content), encodeRecord(FCGI_STDOUT, 9)]);
        const records = decodeAll(splitAt(bytes, cuts));
        assert.ok(records.every((r) => r.content.length / 2 <= 65535));
        assert.equal(records.at(-1)!.content, '');
        assert.equal(records.reduce((n, r) => n + r.content.length / 2, 0), length);
      }),
      { numRuns: 30 },
    );
  });

  test('pairs round-trip, whatever the names, values and lengths', () => {
    const text = fc.string({ unit: 'binary', maxLength: 200 });
    fc.assert(
      fc.property(fc.dictionary(text, text, { maxKeys: 20 }), fc.string({ unit: 'binary', minLength: 120, maxLength: 140 }), (dict, long) => {
        const pairs = { ...dict, LONG_VALUE: long };
        assert.deepEqual({ ...decodePairs(encodePairs(Object.entries(pairs))) }, { ...pairs });
      }),
    );
  });

  test('arbitrary bytes raise only the codec error', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 2000 }), fc.array(fc.nat(), { maxLength: 10 }), fc.boolean(), (bytes, cuts, version1) => {
        // Half the time the first byte is version 1, so the decoder gets past its first check and
        // reads lengths, padding and types from the noise.
        const input = Buffer.from(bytes);
        if (version1 && input.length > 0) input[0] = 1;
        try {
          decodeAll(splitAt(input, cuts));
        } catch (err) {
          assert.ok(err instanceof FastCGIProtocolError, String(err));
        }
        try {
          decodePairs(Buffer.from(bytes));
        } catch (err) {
          assert.ok(err instanceof FastCGIProtocolError, String(err));
        }
      }),
    );
  });
});
