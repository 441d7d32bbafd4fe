// Parses the header block a CGI script writes before its body (RFC 3875 §6), incrementally, and classifies the response: document, local redirect or client redirect; or, for nph- scripts, the HTTP status line and headers.
import { reasonPhrase } from '../response-output.ts';

export type ResponseKind = 'document' | 'local-redirect' | 'client-redirect';

export interface CgiHead {
  status: number;
  reason: string;
  /** Every header field except Status, in order, names spelled as the script wrote them. */
  headers: Array<[name: string, value: string]>;
  /** The Location field, if any. */
  location: string | undefined;
  /**
   * §6.2.2: a local redirect is a Location that is a path ("/…", not "//…") and is the only field;
   * the server serves that path itself. §6.2.3/§6.2.4: any other Location is a client redirect.
   */
  kind: ResponseKind;
  /** The script's Content-Length when it is one valid number, else undefined. */
  contentLength: number | undefined;
  /** True for the head of an nph- script (an HTTP status line was parsed). */
  nph: boolean;
  /** The bytes of the header block, blank line included (what an nph- response sends as is). */
  raw: Buffer;
}

/** The script's output is not a valid CGI response. The message says why, for the error log. */
export class CgiResponseError extends Error {}

export interface CgiHeadParserOptions {
  /** Largest header block accepted, in bytes. Default 64 KiB. */
  maxHeaderBytes?: number;
  /** Parse an nph- script's output: an HTTP/1.x status line, then header fields. */
  nph?: boolean;
}

// RFC 9110 §5.6.2 token: what a field name may be.
const tokenRe = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;
// Control characters other than HTAB cannot be in a field value (they would split or corrupt the
// HTTP response). Bytes 0x80-0xff are allowed as obs-text and passed on unchanged.
// eslint-disable-next-line no-control-regex
const badValueRe = /[\x00-\x08\x0a-\x1f\x7f]/;
const statusRe = /^(\d{3})(?:[ \t]+(.*))?$/;
const nphStatusRe = /^HTTP\/1\.[01] (\d{3})(?: (.*))?$/;

/** Finds the blank line ending a header block: "\n\n" or "\n\r\n". Returns the index after it. */
function findEnd(buf: Buffer, from: number): number {
  let i = buf.indexOf(0x0a, from);
  while (i !== -1) {
    const next = buf[i + 1];
    if (next === 0x0a) return i + 2;
    if (next === 0x0d && buf[i + 2] === 0x0a) return i + 3;
    if (next === undefined || (next === 0x0d && i + 2 >= buf.length)) return -1;
    i = buf.indexOf(0x0a, i + 1);
  }
  return -1;
}

export class CgiHeadParser {
  private buffered: Buffer | null = null;
  private readonly max: number;
  private readonly nph: boolean;

  constructor(options: CgiHeadParserOptions = {}) {
    this.max = options.maxHeaderBytes ?? 64 * 1024;
    this.nph = options.nph ?? false;
  }

  /**
   * Feeds the next bytes of output. Returns undefined while the header block is incomplete, then
   * the head and the bytes after it (the start of the body). Throws CgiResponseError.
   */
  push(chunk: Buffer): { head: CgiHead; rest: Buffer } | undefined {
    let from = 0;
    let buf = chunk;
    if (this.buffered) {
      from = Math.max(0, this.buffered.length - 2);
      buf = Buffer.concat([this.buffered, chunk]);
    }
    // A script may start with a blank line only if it has nothing to say, which is an error below.
    const end = buf[0] === 0x0a ? 1 : buf[0] === 0x0d && buf[1] === 0x0a ? 2 : findEnd(buf, from);
    if (end === -1) {
      if (buf.length > this.max) throw new CgiResponseError(`cgi: the header block is larger than ${this.max} bytes`);
      this.buffered = buf;
      return undefined;
    }
    if (end > this.max) throw new CgiResponseError(`cgi: the header block is larger than ${this.max} bytes`);
    this.buffered = null;
    const raw = buf.subarray(0, end);
    return { head: this.parse(raw), rest: buf.subarray(end) };
  }

  /** The output ended: an error whatever was seen, since no complete header block arrived. */
  end(): CgiResponseError {
    return this.buffered && this.buffered.length > 0
      ? new CgiResponseError('cgi: the output ended inside the header block')
      : new CgiResponseError('cgi: the script wrote no output');
  }

  private parse(raw: Buffer): CgiHead {
    // latin1 keeps every byte as one character, so values reach the client unchanged.
    const lines = raw.toString('latin1').split('\n');
    lines.pop(); // after the final "\n"
    lines.pop(); // the blank line
    if (lines.length === 0) throw new CgiResponseError('cgi: the header block is empty');
    let status: number | undefined;
    let reason = '';
    let first = 0;
    if (this.nph) {
      const m = nphStatusRe.exec(stripCr(lines[0]!));
      if (!m) throw new CgiResponseError(`cgi: an nph- script must start with an HTTP/1.x status line, got ${JSON.stringify(lines[0]!.slice(0, 80))}`);
      status = Number(m[1]);
      reason = m[2] ?? '';
      first = 1;
    }
    const headers: Array<[string, string]> = [];
    let location: string | undefined;
    let contentLength: number | undefined;
    let lengthSeen = false;
    for (let i = first; i < lines.length; i++) {
      const line = stripCr(lines[i]!);
      if (line.charCodeAt(0) === 0x20 || line.charCodeAt(0) === 0x09) {
        throw new CgiResponseError('cgi: a header line starts with whitespace (line folding is not allowed)');
      }
      const colon = line.indexOf(':');
      const name = colon === -1 ? '' : line.slice(0, colon);
      if (!tokenRe.test(name)) throw new CgiResponseError(`cgi: malformed header line ${JSON.stringify(line.slice(0, 80))}`);
      const value = line.slice(colon + 1).replace(/^[ \t]+|[ \t]+$/g, '');
      if (badValueRe.test(value)) throw new CgiResponseError(`cgi: header ${name} holds a control character`);
      const lower = name.toLowerCase();
      if (lower === 'status' && !this.nph) {
        // §6.3.3: Status = 3-digit code, then an optional reason phrase.
        if (status !== undefined) throw new CgiResponseError('cgi: more than one Status header');
        const m = statusRe.exec(value);
        const code = m ? Number(m[1]) : NaN;
        if (!m || code < 200 || code > 599) throw new CgiResponseError(`cgi: invalid Status ${JSON.stringify(value.slice(0, 80))}`);
        status = code;
        reason = m[2] ?? '';
        continue;
      }
      if (lower === 'location') {
        if (location !== undefined) throw new CgiResponseError('cgi: more than one Location header');
        if (!value) throw new CgiResponseError('cgi: empty Location header');
        location = value;
      } else if (lower === 'content-length') {
        // Kept only when it is one valid number: a wrong or conflicting length must not frame the response.
        const n = /^\d{1,15}$/.test(value) ? Number(value) : NaN;
        contentLength = !lengthSeen && Number.isSafeInteger(n) ? n : undefined;
        lengthSeen = true;
      }
      headers.push([name, value]);
    }
    let kind: ResponseKind = 'document';
    if (location !== undefined && !this.nph) {
      const isPath = location.startsWith('/') && !location.startsWith('//') && !location.startsWith('/\\');
      if (isPath && headers.length === 1 && status === undefined) kind = 'local-redirect';
      else {
        kind = 'client-redirect';
        // §6.2.3: a client redirect without a Status is a 302.
        status ??= 302;
      }
    }
    status ??= 200;
    return {
      status,
      reason: reason || reasonPhrase(status),
      headers,
      location,
      kind,
      contentLength: lengthSeen ? contentLength : undefined,
      nph: this.nph,
      raw,
    };
  }
}

function stripCr(line: string): string {
  return line.charCodeAt(line.length - 1) === 0x0d ? line.slice(0, -1) : line;
}
