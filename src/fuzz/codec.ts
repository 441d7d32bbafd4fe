// Fuzz targets for the FastCGI codec (decoder, name-value pairs, fixed bodies): arbitrary bytes, valid streams split anywhere, and valid streams with one byte changed.
import fc from 'fast-check';
import { RecordDecoder } from '../fastcgi/decoder.ts';
import { decodePairs, encodePairs, forEachPair } from '../fastcgi/pairs.ts';
import {
  FCGI_BEGIN_REQUEST,
  FCGI_END_REQUEST,
  FCGI_GET_VALUES,
  FCGI_GET_VALUES_RESULT,
  FCGI_MAX_CONTENT_LENGTH,
  FCGI_PARAMS,
  FCGI_STDIN,
  FastCGIProtocolError,
} from '../fastcgi/protocol.ts';
import { decodeBeginRequest, decodeEndRequest, encodeBeginRequest, encodeRecord, encodeStream } from '../fastcgi/record.ts';
import { checkFor, splitAt, type FuzzOptions, type PropertyResult } from './check.ts';

export interface DecodedRecord {
  type: number;
  requestId: number;
  content: string;
}

export interface DecodeOutcome {
  records: DecodedRecord[];
  /** The codec error that ended decoding, if any. */
  error?: string;
}

/**
 * Decodes chunks as the responder would, also decoding the bodies it interprets (BEGIN_REQUEST,
 * END_REQUEST, and the pairs of PARAMS and GET_VALUES). Throws anything that is not the codec's
 * own error, which is what the properties look for.
 */
export function decodeLikeTheResponder(chunks: readonly Buffer[]): DecodeOutcome {
  const records: DecodedRecord[] = [];
  const params = new Map<number, Buffer[]>();
  const decoder = new RecordDecoder((type, requestId, content) => {
    if (content.length > FCGI_MAX_CONTENT_LENGTH) throw new Error(`record content of ${content.length} bytes`);
    records.push({ type, requestId, content: content.toString('hex') });
    if (type === FCGI_BEGIN_REQUEST) decodeBeginRequest(content);
    else if (type === FCGI_END_REQUEST) decodeEndRequest(content);
    else if (type === FCGI_GET_VALUES || type === FCGI_GET_VALUES_RESULT) decodePairs(content);
    else if (type === FCGI_PARAMS) {
      // Pairs may straddle records: decode once the stream ends, as the responder does.
      const list = params.get(requestId) ?? [];
      if (content.length > 0) list.push(Buffer.from(content));
      else decodePairs(Buffer.concat(list));
      params.set(requestId, content.length > 0 ? list : []);
    }
  });
  try {
    for (const chunk of chunks) decoder.push(chunk);
  } catch (err) {
    if (err instanceof FastCGIProtocolError) return { records, error: err.message };
    throw err;
  }
  return { records };
}

const arbRecord = fc.record({
  type: fc.integer({ min: 0, max: 255 }),
  requestId: fc.integer({ min: 0, max: 0xffff }),
  content: fc.oneof({ weight: 8, arbitrary: fc.uint8Array({ maxLength: 300 }) }, // Large contents are generated cheaply: a length and a fill byte.
    { weight: 1, arbitrary: fc.tuple(fc.integer({ min: 60_000, max: 65_535 }), fc.integer({ min: 0, max: 255 })).map(([n, b]) => new Uint8Array(n).fill(b)) }),
});

const arbPairs = fc.array(fc.tuple(fc.string({ unit: 'binary', maxLength: 200 }), fc.string({ unit: 'binary', maxLength: 300 })), { maxLength: 12 });

/** A valid request as a web server sends it: BEGIN_REQUEST, PARAMS split anywhere, STDIN. */
export const arbRequestStream = fc
  .record({
    id: fc.integer({ min: 1, max: 0xffff }),
    role: fc.constantFrom(1, 2, 3, 7),
    flags: fc.integer({ min: 0, max: 255 }),
    pairs: arbPairs,
    paramCuts: fc.array(fc.nat(), { maxLength: 4 }),
    body: fc.uint8Array({ maxLength: 2000 }),
  })
  .map(({ id, role, flags, pairs, paramCuts, body }) => {
    const encoded = encodePairs(pairs);
    const paramRecords = splitAt(encoded, paramCuts).filter((p) => p.length > 0).map((p) => encodeRecord(FCGI_PARAMS, id, p));
    return Buffer.concat([
      encodeBeginRequest(id, role, flags),
      ...paramRecords,
      encodeRecord(FCGI_PARAMS, id),
      encodeStream(FCGI_STDIN, id, body),
      encodeRecord(FCGI_STDIN, id),
    ]);
  });

function sameOutcome(a: DecodeOutcome, b: DecodeOutcome): boolean {
  return JSON.stringify(a) === JSON.stringify(b);
}

export function codecProperties() {
  return {
    'arbitrary bytes in arbitrary chunks raise only the codec error': fc.property(fc.uint8Array({ maxLength: 4096 }), fc.array(fc.nat(), { maxLength: 8 }), (bytes, cuts) => {
      decodeLikeTheResponder(splitAt(Buffer.from(bytes), cuts));
    }),

    'any records, split anywhere, decode to the same records': fc.property(fc.array(arbRecord, { maxLength: 6 }), fc.array(fc.nat(), { maxLength: 10 }), (records, cuts) => {
      const bytes = Buffer.concat(records.map((r) => encodeRecord(r.type, r.requestId, r.content)));
      const seen: DecodedRecord[] = [];
      const decoder = new RecordDecoder((type, requestId, content) => seen.push({ type, requestId, content: content.toString('hex') }));
      for (const chunk of splitAt(bytes, cuts)) decoder.push(chunk);
      const want = records.map((r) => ({ type: r.type, requestId: r.requestId, content: Buffer.from(r.content).toString('hex') }));
      return decoder.atBoundary && JSON.stringify(seen) === JSON.stringify(want);
    }),

    'a valid request with one byte changed: the codec error or records, the same whatever the chunking': fc.property(
      arbRequestStream,
      fc.nat(),
      fc.integer({ min: 0, max: 255 }),
      fc.array(fc.nat(), { maxLength: 8 }),
      (stream, at, value, cuts) => {
        const mutated = Buffer.from(stream);
        mutated[at % mutated.length] = value;
        const whole = decodeLikeTheResponder([mutated]);
        const split = decodeLikeTheResponder(splitAt(mutated, cuts));
        return sameOutcome(whole, split);
      },
    ),

    'a valid request, split anywhere, decodes to its records and pairs': fc.property(arbRequestStream, fc.array(fc.nat(), { maxLength: 16 }), (stream, cuts) => {
      const whole = decodeLikeTheResponder([stream]);
      const split = decodeLikeTheResponder(splitAt(stream, cuts));
      return whole.error === undefined && sameOutcome(whole, split);
    }),

    'arbitrary pair bytes raise only the codec error, and never read past the end': fc.property(fc.uint8Array({ maxLength: 512 }), (bytes) => {
      const buffer = Buffer.from(bytes);
      let total = 0;
      try {
        forEachPair(buffer, (name, value) => {
          total += Buffer.byteLength(name) + Buffer.byteLength(value);
        });
      } catch (err) {
        if (err instanceof FastCGIProtocolError) return true;
        throw err;
      }
      // Multi-byte decoding of invalid UTF-8 may grow a string, never beyond 3 bytes per input byte.
      return total <= buffer.length * 3;
    }),

    'pairs round-trip: any names and values': fc.property(fc.array(fc.tuple(fc.string({ unit: 'grapheme', maxLength: 40 }), fc.string({ unit: 'grapheme', maxLength: 300 })), { maxLength: 10 }), (pairs) => {
      const decoded: Array<[string, string]> = [];
      forEachPair(encodePairs(pairs), (n, v) => decoded.push([n, v]));
      return JSON.stringify(decoded) === JSON.stringify(pairs);
    }),
  };
}

/** Runs every codec property for a share of the time budget. */
export async function fuzzCodec(options: FuzzOptions): Promise<PropertyResult[]> {
  const properties = Object.entries(codecProperties());
  const results: PropertyResult[] = [];
  for (const [name, property] of properties) {
    results.push(await checkFor('codec', name, property, { ...options, timeMs: options.timeMs / properties.length }));
  }
  return results;
}
