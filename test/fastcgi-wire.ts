// A small raw FastCGI client for the tests: sends records byte for byte and collects what comes back.
import net from 'node:net';
import { RecordDecoder } from '../src/fastcgi/decoder.ts';
import { encodePairs } from '../src/fastcgi/pairs.ts';
import {
  FCGI_END_REQUEST,
  FCGI_KEEP_CONN,
  FCGI_PARAMS,
  FCGI_RESPONDER,
  FCGI_STDERR,
  FCGI_STDIN,
  FCGI_STDOUT,
} from '../src/fastcgi/protocol.ts';
import { decodeEndRequest, encodeBeginRequest, encodeRecord, encodeStream } from '../src/fastcgi/record.ts';

export interface WireRecord {
  type: number;
  requestId: number;
  content: Buffer;
}

export interface WireResponse {
  stdout: Buffer;
  stderr: string;
  appStatus: number;
  protocolStatus: number;
  /** Every record of this request, in arrival order. */
  records: WireRecord[];
}

export class WireClient {
  readonly records: WireRecord[] = [];
  private waiters: Array<() => void> = [];
  closed = false;
  readonly closedPromise: Promise<void>;

  private constructor(readonly socket: net.Socket) {
    const decoder = new RecordDecoder((type, requestId, content) => {
      this.records.push({ type, requestId, content: Buffer.from(content) });
      this.wake();
    });
    socket.on('data', (chunk) => decoder.push(chunk));
    this.closedPromise = new Promise((resolve) => {
      socket.on('close', () => {
        this.closed = true;
        this.wake();
        resolve();
      });
    });
    socket.on('error', () => {});
  }

  static connect(address: string | number, host = '127.0.0.1'): Promise<WireClient> {
    return new Promise((resolve, reject) => {
      const socket = typeof address === 'number' ? net.connect(address, host) : net.connect(address);
      socket.once('connect', () => resolve(new WireClient(socket)));
      socket.once('error', reject);
    });
  }

  private wake(): void {
    const waiters = this.waiters;
    this.waiters = [];
    for (const w of waiters) w();
  }

  write(bytes: Buffer): void {
    this.socket.write(bytes);
  }

  begin(id: number, flags = FCGI_KEEP_CONN, role = FCGI_RESPONDER): void {
    this.write(encodeBeginRequest(id, role, flags));
  }

  params(id: number, params: Record<string, string>): void {
    this.write(Buffer.concat([encodeStream(FCGI_PARAMS, id, encodePairs(params)), encodeRecord(FCGI_PARAMS, id)]));
  }

  stdin(id: number, body: Buffer | string = ''): void {
    const bytes = typeof body === 'string' ? Buffer.from(body) : body;
    this.write(Buffer.concat([encodeStream(FCGI_STDIN, id, bytes), encodeRecord(FCGI_STDIN, id)]));
  }

  /** BEGIN_REQUEST, PARAMS and STDIN in one go, as nginx sends them. */
  request(id: number, params: Record<string, string>, body: Buffer | string = '', flags = FCGI_KEEP_CONN): void {
    this.begin(id, flags);
    this.params(id, params);
    this.stdin(id, body);
  }

  /** Waits until `predicate` holds for the records received so far (or the connection closes). */
  async waitFor<T>(predicate: () => T | undefined, timeoutMs = 5000): Promise<T> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const value = predicate();
      if (value !== undefined) return value;
      if (this.closed) throw new Error('connection closed while waiting');
      const left = deadline - Date.now();
      if (left <= 0) throw new Error('timed out waiting for records');
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.waiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
  }

  /** Collects one request's output until its END_REQUEST. */
  async response(id: number, timeoutMs = 5000): Promise<WireResponse> {
    const end = await this.waitFor(() => this.records.find((r) => r.requestId === id && r.type === FCGI_END_REQUEST), timeoutMs);
    const mine = this.records.filter((r) => r.requestId === id);
    const { appStatus, protocolStatus } = decodeEndRequest(end.content);
    return {
      stdout: Buffer.concat(mine.filter((r) => r.type === FCGI_STDOUT).map((r) => r.content)),
      stderr: Buffer.concat(mine.filter((r) => r.type === FCGI_STDERR).map((r) => r.content)).toString(),
      appStatus,
      protocolStatus,
      records: mine,
    };
  }

  close(): void {
    this.socket.destroy();
  }
}

/** Splits a CGI response (header block, blank line, body) the way a web server reads it. */
export function parseCgiResponse(stdout: Buffer): { status: number; headers: Array<[string, string]>; body: Buffer } {
  const end = stdout.indexOf('\r\n\r\n');
  if (end === -1) throw new Error(`no header block in ${JSON.stringify(stdout.toString().slice(0, 200))}`);
  const headers: Array<[string, string]> = [];
  let status = 200;
  for (const line of stdout.subarray(0, end).toString('latin1').split('\r\n')) {
    const colon = line.indexOf(':');
    const name = line.slice(0, colon).toLowerCase();
    const value = line.slice(colon + 1).trim();
    if (name === 'status') status = Number(value.split(' ')[0]);
    else headers.push([name, value]);
  }
  return { status, headers, body: stdout.subarray(end + 4) };
}
