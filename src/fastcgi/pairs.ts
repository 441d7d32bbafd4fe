// Name-value pairs (§3.4): lengths of 1 byte (< 128) or 4 bytes (high bit set), then name and value bytes.
import { FastCGIProtocolError } from './protocol.ts';

function lengthSize(length: number): number {
  return length < 128 ? 1 : 4;
}

function writeLength(target: Buffer, offset: number, length: number): number {
  if (length < 128) {
    target[offset] = length;
    return offset + 1;
  }
  target.writeUInt32BE((length | 0x80000000) >>> 0, offset);
  return offset + 4;
}

/** Encodes pairs into one buffer; split it into PARAMS records with encodeStream. Strings are UTF-8. */
export function encodePairs(pairs: Iterable<readonly [string, string]> | Record<string, string>): Buffer {
  const entries = Symbol.iterator in pairs ? [...(pairs as Iterable<readonly [string, string]>)] : Object.entries(pairs);
  const encoded: Array<[Buffer, Buffer]> = [];
  let total = 0;
  for (const [name, value] of entries) {
    const n = Buffer.from(name, 'utf8');
    const v = Buffer.from(value, 'utf8');
    if (n.length > 0x7fffffff || v.length > 0x7fffffff) throw new RangeError('fastcgi: name-value pair too long');
    encoded.push([n, v]);
    total += lengthSize(n.length) + lengthSize(v.length) + n.length + v.length;
  }
  const out = Buffer.allocUnsafe(total);
  let offset = 0;
  for (const [n, v] of encoded) {
    offset = writeLength(out, offset, n.length);
    offset = writeLength(out, offset, v.length);
    out.set(n, offset);
    offset += n.length;
    out.set(v, offset);
    offset += v.length;
  }
  return out;
}

/** Calls `onPair` for each pair in a complete PARAMS (or GET_VALUES) stream; a truncated pair throws. */
export function forEachPair(buffer: Buffer, onPair: (name: string, value: string) => void): void {
  const end = buffer.length;
  let offset = 0;
  while (offset < end) {
    let nameLength = buffer[offset];
    if (nameLength & 0x80) {
      if (offset + 4 > end) throw new FastCGIProtocolError('truncated name length in name-value pair');
      nameLength = buffer.readUInt32BE(offset) & 0x7fffffff;
      offset += 4;
    } else offset += 1;
    if (offset >= end) throw new FastCGIProtocolError('truncated value length in name-value pair');
    let valueLength = buffer[offset];
    if (valueLength & 0x80) {
      if (offset + 4 > end) throw new FastCGIProtocolError('truncated value length in name-value pair');
      valueLength = buffer.readUInt32BE(offset) & 0x7fffffff;
      offset += 4;
    } else offset += 1;
    // The lengths come from the peer: checking them against what is there is what makes an
    // absurd length (up to 2^31) harmless.
    if (nameLength + valueLength > end - offset) {
      throw new FastCGIProtocolError(`name-value pair of ${nameLength}+${valueLength} bytes overruns the ${end - offset} bytes left`);
    }
    const name = decodeValue(buffer, offset, offset + nameLength);
    offset += nameLength;
    const value = valueLength === 0 ? '' : decodeValue(buffer, offset, offset + valueLength);
    offset += valueLength;
    onPair(name, value);
  }
}

// Names and values are UTF-8 in practice (paths, query strings); ASCII, by far the most common, decodes faster as latin1.
function decodeValue(buffer: Buffer, start: number, end: number): string {
  for (let i = start; i < end; i++) {
    if (buffer[i] & 0x80) return buffer.toString('utf8', start, end);
  }
  return buffer.toString('latin1', start, end);
}

/**
 * Decodes pairs into a plain object. A repeated name keeps its last value, so the later, more
 * specific `fastcgi_param` line wins (php-fpm keeps the first, which surprises people).
 */
export function decodePairs(buffer: Buffer): Record<string, string> {
  const params: Record<string, string> = {};
  forEachPair(buffer, (name, value) => {
    // `__proto__` as a key would change the object's prototype rather than add a param.
    if (name === '__proto__') Object.defineProperty(params, name, { value, enumerable: true, writable: true, configurable: true });
    else params[name] = value;
  });
  return params;
}
