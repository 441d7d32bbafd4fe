// The app interface (a Fetch handler) and the lazy Request built from CGI/FastCGI params, shared by both modes.
import { pathToFileURL } from 'node:url';
import path from 'node:path';

export type Role = 'responder' | 'authorizer' | 'filter';

/** What an app gets next to the Request. Hono sees it as `c.env`. */
export interface AppContext {
  /** Every CGI/FastCGI variable, as sent by the web server. */
  params: Record<string, string>;
  role: Role;
  /** Aborts when the web server aborts the request or the client goes away (same as request.signal). */
  signal: AbortSignal;
  /** A line for the web server's error log (FastCGI STDERR), before the response; absent outside FastCGI. */
  stderr?: (message: string) => void;
  /** The FastCGI request id, which the access line and our error lines for this request also carry; absent outside FastCGI. */
  requestId?: number;
}

export interface App {
  fetch(request: Request, context: AppContext): Response | Promise<Response>;
}

/** Loads a module whose default export is `{ fetch(request, context) }` (a Hono app qualifies). */
export async function loadApp(file: string): Promise<App> {
  const url = pathToFileURL(path.resolve(file)).href;
  let mod: Record<string, unknown>;
  try {
    mod = await import(url);
  } catch (err) {
    throw new Error(`app: cannot load ${file}: ${(err as Error).message}`, { cause: err });
  }
  const candidate = (mod.default ?? mod) as Partial<App> | undefined;
  if (!candidate || typeof candidate.fetch !== 'function') {
    throw new Error(`app: ${file} must export default { fetch(request, context) }`);
  }
  return candidate as App;
}

const kAbort = Symbol('abort');

/** What has an abort signal, perhaps built only when read: a LazyAbort, an AbortController. */
interface SignalSource {
  readonly signal: AbortSignal;
}

/**
 * An app's context whose `signal` is built only when the app reads it (see LazyAbort). A class, so
 * that the getter is on the prototype: for a getter in an object literal V8 allocates an
 * AccessorPair in its old generation, and through the getter's closure it keeps the request's
 * objects alive through every young-generation collection (see the request object in
 * src/http/server.ts).
 */
export class LazyAppContext implements AppContext {
  readonly params: Record<string, string>;
  readonly role: Role;
  // Absent outside FastCGI, as AppContext says: declared, not defined as undefined.
  declare readonly stderr?: (message: string) => void;
  declare readonly requestId?: number;
  // A symbol rather than a #private field, so that the getter still works on an object made from
  // this one (Object.create) or through a Proxy, as it did in a literal.
  private readonly [kAbort]: SignalSource;

  constructor(params: Record<string, string>, role: Role, abort: SignalSource, stderr?: (message: string) => void, requestId?: number) {
    this.params = params;
    this.role = role;
    this[kAbort] = abort;
    if (stderr) (this as { stderr?: (message: string) => void }).stderr = stderr;
    if (requestId !== undefined) (this as { requestId?: number }).requestId = requestId;
  }

  get signal(): AbortSignal {
    return this[kAbort].signal;
  }
}

/** Inputs of a lazy request: the params, and the body as a stream factory so GET requests never build one. */
export interface LazyRequestInit {
  params: Record<string, string>;
  /** Its signal is read only when the app reads the request's. */
  abort: SignalSource;
  /** Called at most once, when the app first touches the body. null means no body. */
  body: (() => ReadableStream<Uint8Array> | null) | null;
}

const kInit = Symbol('init');
const kUrl = Symbol('url');
const kHeaders = Symbol('headers');
const kRequest = Symbol('request');

interface LazyRequestFields {
  [kInit]: LazyRequestInit;
  [kUrl]?: string;
  [kHeaders]?: Headers;
  [kRequest]?: Request;
}

function isTls(params: Record<string, string>): boolean {
  const https = params.HTTPS;
  if (https) return https.toLowerCase() !== 'off';
  return params.REQUEST_SCHEME === 'https';
}

// A host must be a bare name, IPv4 or bracketed IPv6, with an optional port: anything else would
// make `new Request` throw, so it is replaced rather than trusted.
const validHost = /^(?:[A-Za-z0-9._~!$&'()*+,;=-]+|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?$/;
// Bytes that a request target may hold without being percent-encoded first.
const plainTarget = /^\/[\x21-\x7e]*$/;

/**
 * Rebuilds the URL the browser saw: the scheme from HTTPS/REQUEST_SCHEME, the host from HTTP_HOST
 * (else SERVER_NAME:SERVER_PORT), the path and query from REQUEST_URI (else SCRIPT_NAME + PATH_INFO
 * + '?' + QUERY_STRING). Always returns a URL that `new Request` accepts.
 */
export function requestUrl(params: Record<string, string>): string {
  const tls = isTls(params);
  const scheme = tls ? 'https' : 'http';
  let host = params.HTTP_HOST;
  if (!host || !validHost.test(host)) {
    const name = params.SERVER_NAME;
    const port = params.SERVER_PORT;
    host = name && validHost.test(name) ? name : 'localhost';
    if (port && /^\d{1,5}$/.test(port) && port !== (tls ? '443' : '80') && !host.includes(':', host.lastIndexOf(']') + 1)) host += ':' + port;
  }
  let target: string | undefined = params.REQUEST_URI;
  if (target && !target.startsWith('/')) {
    // An absolute-form target (a proxy request) carries its own host; keep only path and query.
    const m = /^[a-z][a-z0-9+.-]*:\/\/[^/?#]*(.*)$/i.exec(target);
    target = m ? m[1] || '/' : undefined;
  }
  if (!target) {
    const query = params.QUERY_STRING;
    target = (params.SCRIPT_NAME || '') + (params.PATH_INFO || '');
    if (!target.startsWith('/')) target = '/' + target;
    if (query) target += '?' + query;
  }
  const hash = target.indexOf('#');
  if (hash !== -1) target = target.slice(0, hash);
  const url = `${scheme}://${host}${target}`;
  if (plainTarget.test(target)) return url;
  // Spaces, non-ASCII or control bytes: let the URL parser percent-encode what it can.
  try {
    return new URL(url).href;
  } catch {
    return `${scheme}://${host}/`;
  }
}

// Header values must be ByteStrings; params decoded as UTF-8 may hold wider characters.
function toByteString(value: string): string {
  // eslint-disable-next-line no-control-regex
  return /[^\x00-\xff]/.test(value) ? Buffer.from(value, 'utf8').toString('latin1') : value;
}

/** Request headers from HTTP_* (HTTP_ACCEPT_LANGUAGE → accept-language), CONTENT_TYPE and CONTENT_LENGTH. */
export function requestHeaders(params: Record<string, string>): Headers {
  const headers = new Headers();
  for (const name in params) {
    let headerName: string | undefined;
    if (name.startsWith('HTTP_')) {
      // HTTP_PROXY is never a request header: it is the httpoxy hole (CVE-2016-5385) in reverse.
      if (name === 'HTTP_PROXY') continue;
      headerName = name.slice(5).toLowerCase().replace(/_/g, '-');
    } else if (name === 'CONTENT_TYPE' || name === 'CONTENT_LENGTH') {
      if (!params[name]) continue;
      headerName = name === 'CONTENT_TYPE' ? 'content-type' : 'content-length';
    }
    if (!headerName) continue;
    try {
      headers.set(headerName, toByteString(params[name]));
    } catch {
      // A name or value that is not a valid header (a web server would not send it) is dropped, not fatal.
    }
  }
  return headers;
}

const noBodyMethods = new Set(['GET', 'HEAD']);

function fields(request: object): LazyRequestFields {
  return request as LazyRequestFields;
}

function realRequest(self: LazyRequestFields & LazyRequest): Request {
  let request = self[kRequest];
  if (!request) {
    const init = self[kInit];
    const method = self.method;
    const body = noBodyMethods.has(method) || !init.body ? null : init.body();
    request = new Request(self.url, {
      method,
      headers: self.headers,
      body,
      signal: init.abort.signal,
      // Required by undici for a streamed body: the request body is sent while the response may already flow.
      ...(body ? { duplex: 'half' } : {}),
    } as RequestInit);
    self[kRequest] = request;
  }
  return request;
}

interface LazyRequest {
  readonly method: string;
  readonly url: string;
  readonly headers: Headers;
  readonly signal: AbortSignal;
}

/**
 * A Request whose URL, Headers and body are built only when the app touches them, as
 * @hono/node-server does: constructing a real Request costs more than decoding the whole FastCGI
 * request. It passes `instanceof Request`; anything beyond method/url/headers/signal builds the real one.
 */
const lazyRequestPrototype: object = Object.create(Request.prototype, {
  method: {
    get(this: LazyRequestFields) {
      return (this[kInit].params.REQUEST_METHOD || 'GET').toUpperCase();
    },
  },
  url: {
    get(this: LazyRequestFields) {
      return (this[kUrl] ??= requestUrl(this[kInit].params));
    },
  },
  headers: {
    get(this: LazyRequestFields) {
      return (this[kHeaders] ??= requestHeaders(this[kInit].params));
    },
  },
  signal: {
    get(this: LazyRequestFields) {
      return this[kInit].abort.signal;
    },
  },
  [Symbol.toStringTag]: { value: 'Request' },
});

for (const key of ['body', 'bodyUsed', 'cache', 'credentials', 'destination', 'duplex', 'integrity', 'keepalive', 'mode', 'redirect', 'referrer', 'referrerPolicy']) {
  Object.defineProperty(lazyRequestPrototype, key, {
    get(this: LazyRequestFields & LazyRequest) {
      return (realRequest(this) as unknown as Record<string, unknown>)[key];
    },
  });
}
for (const key of ['arrayBuffer', 'blob', 'bytes', 'clone', 'formData', 'json', 'text']) {
  Object.defineProperty(lazyRequestPrototype, key, {
    value(this: LazyRequestFields & LazyRequest) {
      const request = realRequest(this) as unknown as Record<string, () => unknown>;
      if (typeof request[key] !== 'function') throw new TypeError(`Request.${key} is not supported by this Node version`);
      return request[key]();
    },
  });
}

export function createLazyRequest(init: LazyRequestInit): Request {
  const request = Object.create(lazyRequestPrototype) as LazyRequestFields;
  request[kInit] = init;
  return request as unknown as Request;
}

/** The real Request behind a lazy one, built now (tests and adapters that need a genuine object). */
export function materializeRequest(request: Request): Request {
  return kInit in request ? realRequest(fields(request) as LazyRequestFields & LazyRequest) : request;
}

function isLazy(value: unknown): value is Request {
  return typeof value === 'object' && value !== null && kInit in value;
}

/**
 * `new Request(request, init)` and `fetch(request)` are how app code copies or forwards the
 * Request it was given (Workers, Hono). undici's own code reads internal state a lazy Request does
 * not have, so both are given the real Request behind it: the global Request becomes a subclass
 * that unwraps one (and still counts a lazy one as a Request), and fetch unwraps one too. Done once,
 * when this module loads (before any app: loadApp is in this module), as @hono/node-server
 * replaces the globals it needs: an app that keeps `fetch` or extends `Request` at its own load
 * gets these.
 */
function acceptLazyRequests(): void {
  const GlobalRequest = globalThis.Request;
  const globalFetch = globalThis.fetch;
  class RequestFromLazy extends GlobalRequest {
    constructor(input: string | URL | Request, init?: RequestInit) {
      super(isLazy(input) ? materializeRequest(input) : input, init);
    }

    static [Symbol.hasInstance](value: unknown): boolean {
      return value instanceof GlobalRequest;
    }
  }
  Object.defineProperty(globalThis, 'Request', { value: RequestFromLazy, writable: true, configurable: true });
  globalThis.fetch = (input: string | URL | Request, init?: RequestInit) => globalFetch(isLazy(input) ? materializeRequest(input) : input, init);
}

acceptLazyRequests();
