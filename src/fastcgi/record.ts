// Record encoding (§3.3): the 8-byte header, content, and padding to a multiple of 8; plus the fixed bodies.
import {
  FCGI_BEGIN_REQUEST,
  FCGI_END_REQUEST,
  FCGI_HEADER_LEN,
  FCGI_MAX_CONTENT_LENGTH,
  FCGI_NULL_REQUEST_ID,
  FCGI_REQUEST_COMPLETE,
  FCGI_STDOUT,
  FCGI_UNKNOWN_TYPE,
  FCGI_VERSION_1,
  FastCGIProtocolError,
} from './protocol.ts';

export interface FastCGIRecord {
  type: number;
  requestId: number;
  content: Buffer;
}

/** §3.3 recommends padding so that every record starts on an 8-byte boundary. */
export function paddingFor(contentLength: number): number {
  return -contentLength & 7;
}

export function writeHeader(target: Buffer, offset: number, type: number, requestId: number, contentLength: number, paddingLength: number): void {
  target[offset] = FCGI_VERSION_1;
  target[offset + 1] = type;
  target[offset + 2] = requestId >>> 8;
  target[offset + 3] = requestId & 0xff;
  target[offset + 4] = contentLength >>> 8;
  target[offset + 5] = contentLength & 0xff;
  target[offset + 6] = paddingLength;
  target[offset + 7] = 0;
}

/** The size of the bytes `encodeStream` produces for `contentLength` bytes of content (without the end record). */
export function encodedLength(contentLength: number): number {
  const full = Math.floor(contentLength / FCGI_MAX_CONTENT_LENGTH);
  const rest = contentLength - full * FCGI_MAX_CONTENT_LENGTH;
  let total = full * (FCGI_HEADER_LEN + FCGI_MAX_CONTENT_LENGTH + paddingFor(FCGI_MAX_CONTENT_LENGTH));
  if (rest > 0) total += FCGI_HEADER_LEN + rest + paddingFor(rest);
  return total;
}

/** One record. Content over 65535 bytes is a caller bug, not input: it throws. */
export function encodeRecord(type: number, requestId: number, content: Uint8Array = Buffer.alloc(0)): Buffer {
  const length = content.byteLength;
  if (length > FCGI_MAX_CONTENT_LENGTH) throw new RangeError(`fastcgi: record content of ${length} bytes exceeds ${FCGI_MAX_CONTENT_LENGTH}`);
  if (requestId < 0 || requestId > 0xffff) throw new RangeError(`fastcgi: request id ${requestId} out of range`);
  const padding = paddingFor(length);
  const out = Buffer.allocUnsafe(FCGI_HEADER_LEN + length + padding);
  writeHeader(out, 0, type, requestId, length, padding);
  out.set(content, FCGI_HEADER_LEN);
  out.fill(0, FCGI_HEADER_LEN + length);
  return out;
}

/**
 * Stream content (STDOUT, STDERR, STDIN, PARAMS) as as many records as it needs, each at most
 * 65535 content bytes. Empty input yields no bytes: the end-of-stream record is `encodeRecord(type, id)`.
 */
export function encodeStream(type: number, requestId: number, content: Uint8Array): Buffer {
  const length = content.byteLength;
  const out = Buffer.allocUnsafe(encodedLength(length));
  let inOffset = 0;
  let outOffset = 0;
  while (inOffset < length) {
    const part = Math.min(FCGI_MAX_CONTENT_LENGTH, length - inOffset);
    const padding = paddingFor(part);
    writeHeader(out, outOffset, type, requestId, part, padding);
    out.set(content.subarray(inOffset, inOffset + part), outOffset + FCGI_HEADER_LEN);
    out.fill(0, outOffset + FCGI_HEADER_LEN + part, outOffset + FCGI_HEADER_LEN + part + padding);
    inOffset += part;
    outOffset += FCGI_HEADER_LEN + part + padding;
  }
  return out;
}

/** §5.1 FCGI_BeginRequestBody: role (16 bits), flags, 5 reserved bytes. */
export function encodeBeginRequest(requestId: number, role: number, flags: number): Buffer {
  const body = Buffer.alloc(8);
  body.writeUInt16BE(role, 0);
  body[2] = flags;
  return encodeRecord(FCGI_BEGIN_REQUEST, requestId, body);
}

export function decodeBeginRequest(content: Buffer): { role: number; flags: number } {
  if (content.length !== 8) throw new FastCGIProtocolError(`BEGIN_REQUEST body is ${content.length} bytes, not 8`);
  return { role: content.readUInt16BE(0), flags: content[2] };
}

/** §5.5 FCGI_EndRequestBody: appStatus (32 bits), protocolStatus, 3 reserved bytes. */
export function encodeEndRequest(requestId: number, appStatus: number, protocolStatus: number): Buffer {
  const out = Buffer.allocUnsafe(FCGI_HEADER_LEN + 8);
  writeEndRequest(out, 0, requestId, appStatus, protocolStatus);
  return out;
}

/** §5.5 FCGI_EndRequestRecord (header and body, 16 bytes) written at `offset`. */
function writeEndRequest(target: Buffer, offset: number, requestId: number, appStatus: number, protocolStatus: number): void {
  writeHeader(target, offset, FCGI_END_REQUEST, requestId, 8, 0);
  target.writeUInt32BE(appStatus >>> 0, offset + FCGI_HEADER_LEN);
  target[offset + FCGI_HEADER_LEN + 4] = protocolStatus;
  target.fill(0, offset + FCGI_HEADER_LEN + 5, offset + FCGI_HEADER_LEN + 8);
}

export function decodeEndRequest(content: Buffer): { appStatus: number; protocolStatus: number } {
  if (content.length !== 8) throw new FastCGIProtocolError(`END_REQUEST body is ${content.length} bytes, not 8`);
  return { appStatus: content.readUInt32BE(0), protocolStatus: content[4] };
}

/** §4.2 FCGI_UnknownTypeBody: the type we did not understand, 7 reserved bytes. */
export function encodeUnknownType(type: number): Buffer {
  const body = Buffer.alloc(8);
  body[0] = type;
  return encodeRecord(FCGI_UNKNOWN_TYPE, FCGI_NULL_REQUEST_ID, body);
}

/**
 * A whole small response in one buffer: the STDOUT records for `head` + `body`, the empty STDOUT
 * record that ends the stream, and END_REQUEST. One buffer means one write and one syscall, which
 * is most of the cost of a small response. `head` must be latin1 (a CGI header block is).
 */
export function encodeCompleteResponse(requestId: number, head: string, body: Uint8Array | string | null, appStatus = 0): Buffer {
  const bodyLength = body === null ? 0 : typeof body === 'string' ? Buffer.byteLength(body, 'utf8') : body.byteLength;
  const contentLength = head.length + bodyLength;
  if (contentLength > FCGI_MAX_CONTENT_LENGTH) {
    const content = Buffer.allocUnsafe(contentLength);
    content.write(head, 0, 'latin1');
    if (typeof body === 'string') content.write(body, head.length, 'utf8');
    else if (body) content.set(body, head.length);
    return Buffer.concat([encodeStream(FCGI_STDOUT, requestId, content), encodeRecord(FCGI_STDOUT, requestId), encodeEndRequest(requestId, appStatus, FCGI_REQUEST_COMPLETE)]);
  }
  const padding = paddingFor(contentLength);
  const recordLength = FCGI_HEADER_LEN + contentLength + padding;
  const out = Buffer.allocUnsafe(recordLength + FCGI_HEADER_LEN + FCGI_HEADER_LEN + 8);
  writeHeader(out, 0, FCGI_STDOUT, requestId, contentLength, padding);
  out.write(head, FCGI_HEADER_LEN, 'latin1');
  if (typeof body === 'string') out.write(body, FCGI_HEADER_LEN + head.length, 'utf8');
  else if (body) out.set(body, FCGI_HEADER_LEN + head.length);
  out.fill(0, FCGI_HEADER_LEN + contentLength, recordLength);
  writeHeader(out, recordLength, FCGI_STDOUT, requestId, 0, 0);
  writeEndRequest(out, recordLength + FCGI_HEADER_LEN, requestId, appStatus, FCGI_REQUEST_COMPLETE);
  return out;
}

/** The empty STDOUT record that ends the stream, then END_REQUEST (§5.5), in one buffer. */
export function encodeEndOfResponse(requestId: number, appStatus: number, protocolStatus = FCGI_REQUEST_COMPLETE): Buffer {
  return Buffer.concat([encodeRecord(FCGI_STDOUT, requestId), encodeEndRequest(requestId, appStatus, protocolStatus)]);
}
