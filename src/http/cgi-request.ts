// Turns an HTTP request into what a CGI script or FastCGI app is given: its body (read first when chunked) and its environment (RFC 3875 §4).
import type { Readable } from 'node:stream';
import type { TLSSocket } from 'node:tls';
import { cgiEnv } from '../cgi/env.ts';
import { logError } from '../log.ts';
import type { RouteRequest } from './server.ts';
import { spoolBody } from './spool.ts';

/** The request body as the script gets it, and the CONTENT_LENGTH to announce. */
export interface RequestBody {
  body: Readable | null;
  contentLength: number | undefined;
}

/**
 * §4.2: the body, if any (never after a local redirect, which is a GET). A chunked body is spooled
 * first, since the script must be told its length (CONTENT_LENGTH): only then is the answer a
 * promise. Undefined when the request has been answered already (413, 507) or the client went away.
 */
function readRequestBody(request: RouteRequest, maxBody: number, spoolMemory: number): RequestBody | undefined | Promise<RequestBody | undefined> {
  const { req, res } = request;
  if (request.redirects > 0 || (req.headers['transfer-encoding'] === undefined && req.headers['content-length'] === undefined)) {
    return { body: null, contentLength: undefined };
  }
  const declared = req.headers['content-length'];
  if (declared === undefined || req.headers['transfer-encoding'] !== undefined) return spoolChunkedBody(request, maxBody, spoolMemory);
  const contentLength = Number(declared);
  if (contentLength > maxBody) return refuseBody(request);
  if (request.expectsContinue) res.writeContinue();
  return { body: contentLength > 0 ? req : null, contentLength };
}

async function spoolChunkedBody(request: RouteRequest, maxBody: number, spoolMemory: number): Promise<RequestBody | undefined> {
  const { req, res } = request;
  if (request.expectsContinue) res.writeContinue();
  const spooled = await spoolBody(req, maxBody, spoolMemory);
  if (!spooled.ok) {
    spooled.cleanup();
    if (spooled.reason === 'too-large') return refuseBody(request);
    if (spooled.reason === 'storage') return refuseStorage(request, spooled.error);
    return; // the client went away
  }
  const contentLength = spooled.body.length;
  res.once('close', spooled.body.cleanup);
  return { body: contentLength > 0 ? spooled.body.stream() : null, contentLength };
}

/** What a script or app is given for this request: its body and its environment. */
export interface RequestInput {
  body: Readable | null;
  env: Record<string, string>;
}

/**
 * What a script or app is given for this request. Undefined when the request has been answered
 * already (see readRequestBody); a promise only while a chunked body is spooled.
 */
export function requestInput(request: RouteRequest, target: ScriptTarget, settings: InputSettings): RequestInput | undefined | Promise<RequestInput | undefined> {
  const incoming = readRequestBody(request, settings.maxBody, settings.spoolMemoryBytes ?? 1024 * 1024);
  if (incoming instanceof Promise) return incoming.then((spooled) => inputOf(request, spooled, target, settings));
  return inputOf(request, incoming, target, settings);
}

function inputOf(request: RouteRequest, incoming: RequestBody | undefined, target: ScriptTarget, settings: InputSettings): RequestInput | undefined {
  return incoming && { body: incoming.body, env: requestEnv(request, incoming, target, settings) };
}

/** Where the request goes, as CGI variables (§4.1.5, §4.1.13, §4.1.7). */
export interface ScriptTarget {
  scriptName: string;
  pathInfo: string;
  scriptFilename: string;
  documentRoot: string;
  queryString: string;
}

export interface EnvSettings {
  serverSoftware: string;
  passAuth?: boolean;
  /** PATH given to scripts. */
  path?: string;
}

export interface InputSettings extends EnvSettings {
  /** Larger bodies get 413. */
  maxBody: number;
  /** A chunked body beyond this many bytes waits in a temporary file. Default 1 MiB. */
  spoolMemoryBytes?: number;
}

/**
 * The request's CGI environment. A NUL byte, which no environment can carry, cannot arrive here:
 * Node's HTTP parser refuses it in the request line and headers, and path decoding refuses %00.
 * (Over FastCGI it can: the CGI host checks the environment it is given.)
 */
function requestEnv(request: RouteRequest, incoming: RequestBody, target: ScriptTarget, settings: EnvSettings): Record<string, string> {
  const { req } = request;
  const socket = req.socket;
  return cgiEnv({
    method: request.method,
    requestUri: request.target,
    protocol: `HTTP/${req.httpVersion}`,
    headers: req.rawHeaders,
    // Named one by one: after a spread, V8 defines each later property through a runtime call.
    scriptName: target.scriptName,
    pathInfo: target.pathInfo,
    scriptFilename: target.scriptFilename,
    documentRoot: target.documentRoot,
    queryString: target.queryString,
    remoteAddr: plainAddress(socket.remoteAddress),
    remotePort: socket.remotePort ?? 0,
    serverAddr: plainAddress(socket.localAddress),
    serverPort: socket.localPort ?? 0,
    tls: (socket as TLSSocket).encrypted === true,
    contentLength: incoming.contentLength,
    serverSoftware: settings.serverSoftware,
    passAuth: settings.passAuth,
    path: settings.path,
    // After a local redirect, Apache's names for where the request first went.
    extra: request.redirects > 0 ? redirectVars(req.url ?? '/') : undefined,
  });
}

function refuseBody(request: RouteRequest): undefined {
  // The body stays unread, so the connection cannot carry another request.
  request.res.setHeader('connection', 'close');
  request.error(413);
  return undefined;
}

/** The chunked body could not be spooled (disk full): 507, and the rest of it is not read. */
function refuseStorage(request: RouteRequest, error: string | undefined): undefined {
  logError(`http: cannot spool the request body: ${error ?? 'write failed'}`, { uri: request.req.url });
  request.res.setHeader('connection', 'close');
  request.error(507, 'the request body could not be stored');
  return undefined;
}

function plainAddress(address: string | undefined): string {
  if (!address) return '';
  return address.startsWith('::ffff:') && address.includes('.') ? address.slice(7) : address;
}

function redirectVars(originalTarget: string): Record<string, string> {
  const q = originalTarget.indexOf('?');
  const vars: Record<string, string> = { REDIRECT_URL: q === -1 ? originalTarget : originalTarget.slice(0, q) };
  if (q !== -1) vars.REDIRECT_QUERY_STRING = originalTarget.slice(q + 1);
  return vars;
}
