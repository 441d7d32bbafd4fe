// A streaming record decoder (§3.3): bytes in, whole records out, whatever the chunking; no sockets, no timers.
import { FCGI_HEADER_LEN, FCGI_VERSION_1, FastCGIProtocolError } from './protocol.ts';

export type RecordHandler = (type: number, requestId: number, content: Buffer) => void;

const enum State {
  Header,
  Content,
  Padding,
}

const empty = Buffer.alloc(0);

/**
 * Feed it socket chunks with `push`; it calls `onRecord` once per complete record, in order.
 * A record header may arrive one byte at a time, or many records in one chunk: content that lies
 * whole inside a chunk is handed on as a view, without a copy. Record boundaries carry no meaning
 * (a PARAMS pair may straddle two records), so reassembling streams is the caller's job.
 * Lengths are 16 bits (content) and 8 bits (padding), so a decoder never holds more than one record.
 */
export class RecordDecoder {
  private state = State.Header;
  private readonly header = Buffer.alloc(FCGI_HEADER_LEN);
  private headerFilled = 0;
  private type = 0;
  private requestId = 0;
  private content: Buffer = empty;
  private contentFilled = 0;
  private paddingLeft = 0;
  private stopped = false;

  constructor(private readonly onRecord: RecordHandler) {}

  /** Stop decoding: records still in the current chunk are dropped (the connection is going away). */
  stop(): void {
    this.stopped = true;
  }

  /** True between records: the input so far ended on a record boundary. */
  get atBoundary(): boolean {
    return this.state === State.Header && this.headerFilled === 0;
  }

  /** Decodes what it can from `chunk`; throws FastCGIProtocolError on a version other than 1. */
  push(chunk: Buffer): void {
    const length = chunk.length;
    let offset = 0;
    while (offset < length && !this.stopped) {
      if (this.state === State.Header) {
        let source: Buffer;
        let at: number;
        if (this.headerFilled === 0 && length - offset >= FCGI_HEADER_LEN) {
          source = chunk;
          at = offset;
          offset += FCGI_HEADER_LEN;
        } else {
          const take = Math.min(FCGI_HEADER_LEN - this.headerFilled, length - offset);
          chunk.copy(this.header, this.headerFilled, offset, offset + take);
          this.headerFilled += take;
          offset += take;
          if (this.headerFilled < FCGI_HEADER_LEN) return;
          this.headerFilled = 0;
          source = this.header;
          at = 0;
        }
        if (source[at] !== FCGI_VERSION_1) {
          this.stopped = true;
          throw new FastCGIProtocolError(`unsupported version ${source[at]} in record header (only version 1 exists)`);
        }
        const type = source[at + 1];
        const requestId = (source[at + 2] << 8) | source[at + 3];
        const contentLength = (source[at + 4] << 8) | source[at + 5];
        this.paddingLeft = source[at + 6];
        if (contentLength === 0) {
          this.state = this.paddingLeft > 0 ? State.Padding : State.Header;
          this.onRecord(type, requestId, empty);
        } else if (length - offset >= contentLength) {
          const content = chunk.subarray(offset, offset + contentLength);
          offset += contentLength;
          this.state = this.paddingLeft > 0 ? State.Padding : State.Header;
          this.onRecord(type, requestId, content);
        } else {
          this.type = type;
          this.requestId = requestId;
          this.content = Buffer.allocUnsafe(contentLength);
          this.contentFilled = 0;
          this.state = State.Content;
        }
      } else if (this.state === State.Content) {
        const take = Math.min(this.content.length - this.contentFilled, length - offset);
        chunk.copy(this.content, this.contentFilled, offset, offset + take);
        this.contentFilled += take;
        offset += take;
        if (this.contentFilled === this.content.length) {
          const content = this.content;
          this.content = empty;
          this.state = this.paddingLeft > 0 ? State.Padding : State.Header;
          this.onRecord(this.type, this.requestId, content);
        }
      } else {
        const skip = Math.min(this.paddingLeft, length - offset);
        this.paddingLeft -= skip;
        offset += skip;
        if (this.paddingLeft === 0) this.state = State.Header;
      }
    }
  }
}
