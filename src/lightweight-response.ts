// A Response that keeps its string or bytes body and init as given, and builds the real undici Response only if something asks for it.
//
// Constructing an undici Response (Headers, a ReadableStream for the body, WebIDL checks) costs more
// than encoding the whole FastCGI response. Like @hono/node-server, the responder replaces the global
// Response with this class; `instanceof Response` still holds, and any use beyond status, headers
// init and body source builds the real object behind it.

const GlobalResponse: typeof Response = globalThis.Response;
type BodyInit = ConstructorParameters<typeof Response>[0];
type HeadersInit = ConstructorParameters<typeof Headers>[0];
const kBody = Symbol('body');
const kInit = Symbol('init');
const kReal = Symbol('real');

type PlainBody = string | Uint8Array | null;

interface LightweightFields {
  [kBody]: PlainBody;
  [kInit]: ResponseInit | undefined;
  [kReal]: Response | undefined;
}

const nullBodyStatus = new Set([101, 103, 204, 205, 304]);

function isPlainBody(body: unknown): body is PlainBody | undefined {
  return body === undefined || body === null || typeof body === 'string' || body instanceof Uint8Array;
}

function canStayLight(body: unknown, init: ResponseInit | undefined): boolean {
  if (!isPlainBody(body)) return false;
  if (init === undefined) return true;
  if (typeof init !== 'object' || init === null) return false;
  const status = init.status;
  if (status !== undefined && (!Number.isInteger(status) || status < 200 || status > 599)) return false;
  if (status !== undefined && nullBodyStatus.has(status) && body !== null && body !== undefined) return false;
  return true;
}

function real(self: LightweightFields): Response {
  let response = self[kReal];
  if (!response) {
    response = new GlobalResponse(self[kBody] as BodyInit | null, self[kInit]);
    self[kReal] = response;
  }
  return response;
}

export class LightweightResponse {
  declare [kBody]: PlainBody;
  declare [kInit]: ResponseInit | undefined;
  declare [kReal]: Response | undefined;

  constructor(body?: BodyInit | null, init?: ResponseInit) {
    if (canStayLight(body, init)) {
      this[kBody] = (body ?? null) as PlainBody;
      this[kInit] = init;
    } else {
      // Streams, FormData, Blobs, odd statuses: the real constructor handles (and validates) them.
      this[kReal] = new GlobalResponse(body, init);
    }
  }

  get status(): number {
    return this[kReal]?.status ?? this[kInit]?.status ?? 200;
  }

  get ok(): boolean {
    const status = this.status;
    return status >= 200 && status <= 299;
  }

  static json(data: unknown, init?: ResponseInit): Response {
    const body = JSON.stringify(data);
    if (body === undefined) return GlobalResponse.json(data, init);
    let headers: HeadersInit = { 'content-type': 'application/json' };
    if (init?.headers !== undefined) {
      const given = new Headers(init.headers);
      if (!given.has('content-type')) given.set('content-type', 'application/json');
      headers = given;
    }
    return new LightweightResponse(body, { ...init, headers }) as unknown as Response;
  }

  /**
   * Real undici Responses count as Responses too (`fetch()` results, `Response.redirect()`): app code
   * and the responder test `instanceof Response` against this class once it is the global one.
   */
  static [Symbol.hasInstance](value: unknown): boolean {
    return value instanceof GlobalResponse;
  }

  static error(): Response {
    return GlobalResponse.error();
  }

  static redirect(url: string | URL, status?: number): Response {
    return GlobalResponse.redirect(url, (status ?? 302) as 302);
  }
}

for (const key of ['body', 'bodyUsed', 'headers', 'redirected', 'statusText', 'type', 'url']) {
  Object.defineProperty(LightweightResponse.prototype, key, {
    get(this: LightweightFields) {
      return (real(this) as unknown as Record<string, unknown>)[key];
    },
  });
}
for (const key of ['arrayBuffer', 'blob', 'bytes', 'clone', 'formData', 'json', 'text']) {
  Object.defineProperty(LightweightResponse.prototype, key, {
    value(this: LightweightFields) {
      return (real(this) as unknown as Record<string, () => unknown>)[key]();
    },
  });
}
Object.defineProperty(LightweightResponse.prototype, Symbol.toStringTag, { value: 'Response' });
Object.setPrototypeOf(LightweightResponse.prototype, GlobalResponse.prototype);
Object.setPrototypeOf(LightweightResponse, GlobalResponse);

/** Makes `new Response(...)` in app code build a LightweightResponse. */
export function installLightweightResponse(): void {
  if (globalThis.Response !== (LightweightResponse as unknown as typeof Response)) {
    Object.defineProperty(globalThis, 'Response', { value: LightweightResponse, writable: true, configurable: true });
  }
}

export interface LightweightParts {
  status: number;
  statusText: string | undefined;
  headers: HeadersInit | undefined;
  body: PlainBody;
}

/** The parts of a Response still in its lightweight form, or undefined once the real one exists. */
export function lightweightParts(response: unknown): LightweightParts | undefined {
  // Own fields, not instanceof: every Response passes instanceof LightweightResponse (see above).
  if (typeof response !== 'object' || response === null || !Object.hasOwn(response, kBody)) return undefined;
  const fields = response as unknown as LightweightFields;
  if (fields[kReal]) return undefined;
  const init = fields[kInit];
  return { status: init?.status ?? 200, statusText: init?.statusText, headers: init?.headers, body: fields[kBody] };
}

export { GlobalResponse };
