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

/**
 * Encodes pairs into one buffer; split it into PARAMS records with encodeStream. Strings are UTF-8.
 * Sized first and written in place: one allocation per call, not two per pair.
 */
export function encodePairs(pairs: Iterable<readonly [string, string]> | Record<string, string>): Buffer {
  const strings: string[] = [];
  if (Symbol.iterator in pairs) {
    for (const [name, value] of pairs as Iterable<readonly [string, string]>) strings.push(name, value);
  } else {
    const record = pairs as Record<string, string>;
    for (const name in record) strings.push(name, record[name]!);
  }
  const sizes: number[] = new Array(strings.length);
  let total = 0;
  for (let i = 0; i < strings.length; i++) {
    const size = Buffer.byteLength(strings[i]!, 'utf8');
    if (size > 0x7fffffff) throw new RangeError('fastcgi: name-value pair too long');
    sizes[i] = size;
    total += lengthSize(size) + size;
  }
  const out = Buffer.allocUnsafe(total);
  let offset = 0;
  for (let i = 0; i < strings.length; i += 2) {
    offset = writeLength(out, offset, sizes[i]!);
    offset = writeLength(out, offset, sizes[i + 1]!);
    offset = writeString(out, offset, strings[i]!, sizes[i]!);
    offset = writeString(out, offset, strings[i + 1]!, sizes[i + 1]!);
  }
  return out;
}

function writeString(target: Buffer, offset: number, text: string, size: number): number {
  if (size === 0) return offset;
  // A string whose UTF-8 size is its length is ASCII: latin1 writes the same bytes, faster.
  return offset + target.write(text, offset, size, text.length === size ? 'latin1' : 'utf8');
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
