// A minimal incremental HTTP/1.x response parser for the load generator: status, Content-Length, chunked and read-until-close bodies.

export interface ParsedResponse {
  status: number;
  /** The body bytes, only when the parser was asked to collect them. */
  body: Buffer | undefined;
  /** False when the server will close the connection after this response. */
  keepAlive: boolean;
}

export class ResponseParseError extends Error {}

type State = 'head' | 'length' | 'chunk-size' | 'chunk-data' | 'chunk-crlf' | 'trailers' | 'close';

// A response head larger than this is not one of ours; refusing it bounds memory.
const MAX_HEAD = 64 * 1024;

/**
 * Feeds on socket chunks and calls onResponse once per complete response. It handles only what a
 * benchmark needs (no 1xx, no HEAD), and does the least work per response it can: one indexOf for
 * the head, one latin1 decode, and no body copies unless the body is to be checked.
 */
export class ResponseParser {
  private state: State = 'head';
  private pending: Buffer | undefined;
  private remaining = 0;
  private status = 0;
  private keepAlive = true;
  private parts: Buffer[] = [];

  constructor(
    private readonly onResponse: (response: ParsedResponse) => void,
    private readonly collectBody: boolean,
  ) {}

  /** True between the first byte of a response and its end. */
  get inResponse(): boolean {
    return this.state !== 'head' || this.pending !== undefined;
  }

  execute(chunk: Buffer): void {
    let data = chunk;
    if (this.pending) {
      data = Buffer.concat([this.pending, chunk]);
      this.pending = undefined;
    }
    let offset = 0;
    while (offset < data.length) {
      switch (this.state) {
        case 'head': {
          const end = data.indexOf('\r\n\r\n', offset, 'latin1');
          if (end < 0) {
            if (data.length - offset > MAX_HEAD) throw new ResponseParseError('bench: response head too large');
            this.pending = data.subarray(offset);
            return;
          }
          this.parseHead(data.toString('latin1', offset, end));
          offset = end + 4;
          // parseHead changed the state; the cast undoes TypeScript's narrowing from the switch.
          if ((this.state as State) === 'length' && this.remaining === 0) this.complete();
          break;
        }
        case 'length':
        case 'chunk-data': {
          const take = Math.min(this.remaining, data.length - offset);
          if (this.collectBody) this.parts.push(data.subarray(offset, offset + take));
          offset += take;
          this.remaining -= take;
          if (this.remaining === 0) {
            if (this.state === 'length') this.complete();
            else this.state = 'chunk-crlf';
          }
          break;
        }
        case 'chunk-crlf': {
          if (data.length - offset < 2) {
            this.pending = data.subarray(offset);
            return;
          }
          if (data[offset] !== 13 || data[offset + 1] !== 10) throw new ResponseParseError('bench: malformed chunk terminator');
          offset += 2;
          this.state = 'chunk-size';
          break;
        }
        case 'chunk-size': {
          const eol = data.indexOf('\r\n', offset, 'latin1');
          if (eol < 0) {
            if (data.length - offset > 1024) throw new ResponseParseError('bench: chunk size line too long');
            this.pending = data.subarray(offset);
            return;
          }
          const line = data.toString('latin1', offset, eol);
          const size = parseInt(line.split(';', 1)[0]!.trim(), 16);
          if (!Number.isFinite(size) || size < 0) throw new ResponseParseError(`bench: bad chunk size ${JSON.stringify(line)}`);
          offset = eol + 2;
          if (size === 0) this.state = 'trailers';
          else {
            this.remaining = size;
            this.state = 'chunk-data';
          }
          break;
        }
        case 'trailers': {
          const eol = data.indexOf('\r\n', offset, 'latin1');
          if (eol < 0) {
            this.pending = data.subarray(offset);
            return;
          }
          // An empty line ends the trailer section; anything else is a trailer field we ignore.
          const empty = eol === offset;
          offset = eol + 2;
          if (empty) this.complete();
          break;
        }
        case 'close': {
          if (this.collectBody) this.parts.push(data.subarray(offset));
          offset = data.length;
          break;
        }
      }
    }
  }

  /** Called at end of stream: completes a read-until-close body, and fails on a truncated response. */
  finish(): void {
    if (this.state === 'close') {
      this.complete();
      return;
    }
    if (this.inResponse) throw new ResponseParseError('bench: connection closed in the middle of a response');
  }

  private parseHead(head: string): void {
    if (!head.startsWith('HTTP/1.')) throw new ResponseParseError(`bench: not an HTTP/1.x response: ${JSON.stringify(head.slice(0, 40))}`);
    const http10 = head[7] === '0';
    this.status = Number(head.slice(9, 12));
    if (!Number.isInteger(this.status)) throw new ResponseParseError(`bench: bad status line ${JSON.stringify(head.split('\r\n', 1)[0])}`);
    let length = -1;
    let chunked = false;
    let connection = '';
    let start = head.indexOf('\r\n');
    while (start >= 0) {
      const next = head.indexOf('\r\n', start + 2);
      const line = head.slice(start + 2, next < 0 ? undefined : next);
      start = next;
      const colon = line.indexOf(':');
      if (colon <= 0) continue;
      // Compare lengths first: most header lines are none of the three we look at.
      const nameLength = colon;
      if (nameLength !== 14 && nameLength !== 17 && nameLength !== 10) continue;
      const name = line.slice(0, colon).toLowerCase();
      const value = line.slice(colon + 1).trim().toLowerCase();
      if (name === 'content-length') length = Number(value);
      else if (name === 'transfer-encoding') chunked = value.split(',').some((v) => v.trim() === 'chunked');
      else if (name === 'connection') connection = value;
    }
    this.keepAlive = http10 ? /\bkeep-alive\b/.test(connection) : !/\bclose\b/.test(connection);
    this.parts = [];
    if (this.status === 204 || this.status === 304 || (this.status >= 100 && this.status < 200)) {
      this.state = 'length';
      this.remaining = 0;
    } else if (chunked) this.state = 'chunk-size';
    else if (length >= 0 && Number.isSafeInteger(length)) {
      this.state = 'length';
      this.remaining = length;
    } else {
      this.state = 'close';
      this.keepAlive = false;
    }
  }

  private complete(): void {
    const body = this.collectBody ? (this.parts.length === 1 ? this.parts[0]! : Buffer.concat(this.parts)) : undefined;
    const response: ParsedResponse = { status: this.status, body, keepAlive: this.keepAlive };
    this.state = 'head';
    this.parts = [];
    this.remaining = 0;
    this.onResponse(response);
  }
}
