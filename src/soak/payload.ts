// The bytes the soak sends and expects: a fixed POST body and its checksum, and the chunks of a streamed answer.
import { createHash } from 'node:crypto';

/** Chunk `index` of a streamed answer: `size` bytes, each (index + offset) & 0xff, so a misplaced chunk shows. */
export function streamChunk(index: number, size: number): Uint8Array {
  const bytes = new Uint8Array(size);
  for (let i = 0; i < size; i++) bytes[i] = (index * 7 + i) & 0xff;
  return bytes;
}

/** The whole streamed answer, for comparison. */
export function streamBody(chunks: number, size: number): Buffer {
  return Buffer.concat(Array.from({ length: chunks }, (_, i) => streamChunk(i, size)));
}

/** A deterministic body of `size` bytes (xorshift), different for each seed. */
export function postBody(size: number, seed = 1): Buffer {
  const out = Buffer.allocUnsafe(size);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < size; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = x & 0xff;
  }
  return out;
}

export function sha256Hex(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}
