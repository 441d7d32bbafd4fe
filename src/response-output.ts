// Turns a Fetch Response into CGI output: the `Status:` header block, and the body as bytes or a stream.
import { GlobalResponse, lightweightParts, type LightweightParts } from './lightweight-response.ts';

const reasonPhrases: Record<number, string> = {
  100: 'Continue', 101: 'Switching Protocols', 200: 'OK', 201: 'Created', 202: 'Accepted', 203: 'Non-Authoritative Information',
  204: 'No Content', 205: 'Reset Content', 206: 'Partial Content', 300: 'Multiple Choices', 301: 'Moved Permanently', 302: 'Found',
  303: 'See Other', 304: 'Not Modified', 307: 'Temporary Redirect', 308: 'Permanent Redirect', 400: 'Bad Request',
  401: 'Unauthorized', 402: 'Payment Required', 403: 'Forbidden', 404: 'Not Found', 405: 'Method Not Allowed', 406: 'Not Acceptable',
  407: 'Proxy Authentication Required', 408: 'Request Timeout', 409: 'Conflict', 410: 'Gone', 411: 'Length Required',
  412: 'Precondition Failed', 413: 'Content Too Large', 414: 'URI Too Long', 415: 'Unsupported Media Type', 416: 'Range Not Satisfiable',
  417: 'Expectation Failed', 418: "I'm a teapot", 421: 'Misdirected Request', 422: 'Unprocessable Content', 425: 'Too Early',
  426: 'Upgrade Required', 428: 'Precondition Required', 429: 'Too Many Requests', 431: 'Request Header Fields Too Large',
  451: 'Unavailable For Legal Reasons', 500: 'Internal Server Error', 501: 'Not Implemented', 502: 'Bad Gateway',
  503: 'Service Unavailable', 504: 'Gateway Timeout', 505: 'HTTP Version Not Supported', 507: 'Insufficient Storage',
};

export function reasonPhrase(status: number): string {
  return reasonPhrases[status] ?? 'Unknown';
}

// A CR or LF in a header value would split the response in two (response splitting): such
// characters are replaced by a space, as Go's net/http does for header values.
function safeValue(value: string): string {
  return /[\r\n\0]/.test(value) ? value.replace(/[\r\n\0]/g, ' ') : value;
}

/**
 * The CGI header block for a Response (RFC 3875 §6.3): `Status: 418 I'm a teapot`, each header on
 * its own line (every Set-Cookie separate), then a blank line.
 */
export function cgiHeaderBlock(response: Response, light = lightweightParts(response)): string {
  if (light) {
    const head = lightweightHeaderBlock(light);
    if (head !== undefined) return head;
  }
  const status = response.status;
  let head = `Status: ${status} ${response.statusText || reasonPhrase(status)}\r\n`;
  for (const [name, value] of response.headers) {
    if (name === 'set-cookie') continue;
    head += `${name}: ${safeValue(value)}\r\n`;
  }
  if (response.headers.has('set-cookie')) {
    for (const cookie of response.headers.getSetCookie()) head += `set-cookie: ${safeValue(cookie)}\r\n`;
  }
  return head + '\r\n';
}

let stateSymbol: symbol | null | undefined;

// undici keeps the body it was constructed with (a string or bytes) as `[Symbol(state)].body.source`.
// Reading it skips a ReadableStream per response; if the layout ever changes, the stream path is used.
function findStateSymbol(): symbol | null {
  // The real class: the global one may be the lightweight Response, which has no undici state.
  const probe = new GlobalResponse('probe');
  for (const sym of Object.getOwnPropertySymbols(probe)) {
    const state = (probe as unknown as Record<symbol, { body?: { source?: unknown } }>)[sym];
    if (sym.description === 'state' && state?.body?.source === 'probe') return sym;
  }
  return null;
}

/**
 * The body of a Response as bytes when it was built from a string or bytes and nobody read it,
 * otherwise undefined (use the stream). `null` means no body at all.
 */
export function plainBody(response: Response, light = lightweightParts(response)): Uint8Array | string | null | undefined {
  if (light) return light.body;
  if (response.body === null) return null;
  if (stateSymbol === undefined) stateSymbol = findStateSymbol();
  if (!stateSymbol || response.bodyUsed) return undefined;
  const source = (response as unknown as Record<symbol, { body?: { source?: unknown; stream?: ReadableStream } }>)[stateSymbol]?.body;
  if (!source || source.stream?.locked) return undefined;
  const value = source.source;
  if (typeof value === 'string' || value instanceof Uint8Array) return value;
  return undefined;
}

const headerName = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;
// What undici's Headers would reject in a value (NUL, CR, LF) or cannot hold (beyond latin1).
const badHeaderValue = /[\0\r\n]|[^\x00-\xff]/;

/**
 * Calls `emit` for each header of a lightweight Response's init, without building Headers, and for
 * the default Content-Type of a string body. Returns false, having emitted nothing or only part,
 * when a name or value needs the real Headers' checks (which then throw, as they should).
 */
export function forEachLightweightHeader(parts: LightweightParts, emit: (name: string, value: string) => void): boolean {
  let hasContentType = false;
  const init = parts.headers as unknown;
  if (init !== undefined) {
    let entries: Iterable<readonly [string, string]>;
    if (init instanceof Headers) {
      // Already validated and lower-cased by Headers; only Set-Cookie needs its own lines.
      for (const [name, value] of init) if (name !== 'set-cookie') emit(name, value);
      for (const cookie of init.getSetCookie()) emit('set-cookie', cookie);
      hasContentType = init.has('content-type');
      entries = [];
    } else if (Array.isArray(init)) entries = init as Array<[string, string]>;
    else if (typeof init === 'object' && init !== null) entries = Object.entries(init as Record<string, string>);
    else return false;
    for (const pair of entries) {
      if (pair.length !== 2) return false;
      const name = pair[0];
      const value = String(pair[1]).trim();
      if (!headerName.test(name) || badHeaderValue.test(value)) return false;
      if (!hasContentType && name.length === 12 && name.toLowerCase() === 'content-type') hasContentType = true;
      emit(name, value);
    }
  }
  // A string body gets the default type undici would give it (Fetch standard, "extract a body").
  if (!hasContentType && typeof parts.body === 'string') emit('content-type', 'text/plain;charset=UTF-8');
  return true;
}

/** The header block straight from a lightweight Response's init; undefined when the real Headers must judge it. */
function lightweightHeaderBlock(parts: LightweightParts): string | undefined {
  let head = `Status: ${parts.status} ${parts.statusText || reasonPhrase(parts.status)}\r\n`;
  const complete = forEachLightweightHeader(parts, (name, value) => {
    head += `${name}: ${value}\r\n`;
  });
  return complete ? head + '\r\n' : undefined;
}
