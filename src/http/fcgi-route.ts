// The FastCGI routes of `serve`: /fcgi/NAME to the app fcgi/NAME.ts run as a persistent responder process, and `--fcgi-pass PREFIX=ADDRESS` to an external FastCGI server such as php-fpm.
import fs from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { decodePath, removeDotSegments } from '../cgi/resolve.ts';
import { FastCGIClient, FastCGIUpstreamError, type FastCGIClientOptions, type FastCGIResponse } from '../fastcgi/client.ts';
import { ProcessManager } from '../fastcgi/process-manager.ts';
import { logError, logInfo } from '../log.ts';
import { requestInput } from './cgi-request.ts';
import { sendResponse } from './cgi-response-writer.ts';
import type { Route, RouteRequest } from './server.ts';

const appExtensions = ['.ts', '.mts', '.js', '.mjs'];
const appName = /^[A-Za-z0-9_][A-Za-z0-9_.-]*$/;

interface ProxyCommon {
  serverSoftware: string;
  maxBody: number;
  passAuth?: boolean;
  /** Local redirects followed per request before giving up with 500. Default 10. */
  maxRedirects?: number;
}

/** Where the request goes, as CGI variables (RFC 3875 §4.1.5, §4.1.13) and the client to send it with. */
interface Target {
  scriptName: string;
  pathInfo: string;
  scriptFilename: string;
  documentRoot: string;
  /** Resolves the client late: an app process may have to start first. */
  client: () => Promise<FastCGIClient>;
  /** Ask `client` again after a failure to connect (another process may take the request). */
  retry?: boolean;
}

/** Sends one HTTP request through FastCGI and the answer back, streaming both ways. */
async function proxy(request: RouteRequest, common: ProxyCommon, target: Target, query: string): Promise<void> {
  // php and CGI-style apps need CONTENT_LENGTH, so a chunked body is read first (as nginx does with
  // fastcgi_request_buffering on).
  const { scriptName, pathInfo, scriptFilename, documentRoot } = target;
  const input = await requestInput(request, { scriptName, pathInfo, scriptFilename, documentRoot, queryString: query }, common);
  if (!input) return;
  const { body, env: params } = input;
  let response: FastCGIResponse;
  try {
    for (let attempt = 0; ; attempt++) {
      const client = await target.client();
      try {
        response = await client.request({ params, body, signal: request.signal });
        break;
      } catch (err) {
        // An app process that just died refuses connections until its exit is noticed and it is
        // replaced; nothing was sent, so the request goes to the next process picked, after growing
        // pauses while the replacement starts. A request that reached a process that then died is
        // not sent again (it gets 502): it may have run, or be the one that made its process crash.
        if (!target.retry || !(err instanceof FastCGIUpstreamError) || request.signal.aborted) throw err;
        if (!err.retryable || attempt >= 4) throw err;
        await sleep(10 * 4 ** attempt);
      }
    }
  } catch (err) {
    if (!(err instanceof FastCGIUpstreamError)) throw err;
    body?.resume();
    if (err.status === 499) return;
    // The reason (a crash, a start failure) is already in the log; a 503 also tells the client why.
    return request.error(err.status, err.status === 503 ? err.message.replace(/^fastcgi: /, '') : undefined);
  }
  const head = response.head;
  if (head.kind === 'local-redirect') {
    // RFC 3875 §6.2.2: the server serves the new path itself, as a GET; the app's body is dropped.
    response.body.resume();
    if (request.redirects >= (common.maxRedirects ?? 10)) {
      logError(`fastcgi: more than ${common.maxRedirects ?? 10} local redirects, the last to ${head.location}`, { target: target.scriptName });
      return request.error(500);
    }
    return request.redirect(head.location!);
  }
  sendResponse(request, response.head, response, { who: 'fastcgi: the app', target: target.scriptName });
}

/**
 * The request-target's decoded path segments with dot segments removed (RFC 3986 §5.2.4), and its
 * query; undefined for a malformed path.
 */
function parseTarget(target: string): { segments: string[]; query: string } | undefined {
  const q = target.indexOf('?');
  const decoded = decodePath(q === -1 ? target : target.slice(0, q));
  if (decoded === undefined) return undefined;
  return { segments: removeDotSegments(decoded.replace(/\\/g, '/').split('/')), query: q === -1 ? '' : target.slice(q + 1) };
}

/** The file of app NAME in `dir`, trying each extension; undefined when there is none. */
export function findApp(dir: string, name: string): string | undefined {
  if (!appName.test(name)) return undefined;
  for (const ext of appExtensions) {
    const file = path.join(dir, name + ext);
    if (fs.statSync(file, { throwIfNoEntry: false })?.isFile()) return file;
  }
  return undefined;
}

export interface FcgiAppsRouteOptions extends ProxyCommon {
  /** The directory of apps: /fcgi/NAME runs DIR/NAME.ts. */
  dir: string;
  manager: ProcessManager;
  /** The URL prefix; default "/fcgi". */
  prefix?: string;
}

/** /fcgi/NAME[/more][?query] → the app DIR/NAME.ts in a persistent responder, PATH_INFO "/more". */
export function fcgiAppsRoute(options: FcgiAppsRouteOptions): Route {
  const prefix = (options.prefix ?? '/fcgi').replace(/\/+$/, '');
  const dir = path.resolve(options.dir);
  const documentRoot = path.dirname(dir);
  // A found app is looked up again after a second, not on every request: a stat costs more than the
  // rest of routing. Misses are not remembered, so a new app is served at once.
  const found = new Map<string, { file: string; at: number }>();
  const lookup = (name: string): string | undefined => {
    const now = performance.now();
    const hit = found.get(name);
    if (hit && now - hit.at < 1000) return hit.file;
    const file = findApp(dir, name);
    if (file) found.set(name, { file, at: now });
    else found.delete(name);
    return file;
  };
  return {
    prefix,
    async handle(request) {
      const parsed = parseTarget(request.target);
      if (!parsed) return request.error(400);
      const { segments, query } = parsed;
      const depth = prefix.split('/').length;
      // After dot removal the path must still be PREFIX/NAME[/...].
      if (segments.slice(0, depth).join('/') !== prefix || segments.length <= depth) return request.error(404);
      const name = segments[depth]!;
      const file = lookup(name);
      if (!file) return request.error(404);
      const rest = segments.slice(depth + 1);
      const scriptName = `${prefix}/${name}`;
      return proxy(
        request,
        options,
        {
          scriptName,
          pathInfo: rest.length ? '/' + rest.join('/') : '',
          scriptFilename: file,
          documentRoot,
          client: () => options.manager.client(file, scriptName.slice(1)),
          retry: true,
        },
        query,
      );
    },
  };
}

export interface FcgiPassRouteOptions extends ProxyCommon {
  /** The URL prefix, e.g. "/php" ("/" for everything not served otherwise). */
  prefix: string;
  client: FastCGIClient;
  /** The document root: SCRIPT_FILENAME = ROOT + SCRIPT_NAME, as nginx's fastcgi.conf sets it. */
  root: string;
}

/**
 * Splits a URL path into the script and PATH_INFO by walking the document root: the longest
 * leading part that is a file is the script (what `fastcgi_split_path_info` does with a regex).
 * When no part is a file, the whole path is the script and the upstream decides (php-fpm: 404,
 * "Primary script unknown").
 */
export function splitScriptPath(root: string, segments: readonly string[]): { scriptName: string; pathInfo: string } {
  let current = root;
  for (let i = 1; i < segments.length; i++) {
    const segment = segments[i]!;
    if (segment === '') break;
    current = path.join(current, segment);
    const stat = fs.statSync(current, { throwIfNoEntry: false });
    if (!stat) break;
    if (stat.isDirectory()) continue;
    if (!stat.isFile()) break;
    const rest = segments.slice(i + 1);
    return { scriptName: segments.slice(0, i + 1).join('/'), pathInfo: rest.length ? '/' + rest.join('/') : '' };
  }
  return { scriptName: segments.join('/') || '/', pathInfo: '' };
}

export function fcgiPassRoute(options: FcgiPassRouteOptions): Route {
  const root = path.resolve(options.root);
  const prefix = options.prefix.replace(/\/+$/, '');
  return {
    prefix,
    async handle(request) {
      const parsed = parseTarget(request.target);
      if (!parsed) return request.error(400);
      const { segments, query } = parsed;
      const { scriptName, pathInfo } = splitScriptPath(root, segments);
      if (!(scriptName + '/').startsWith(prefix + '/')) return request.error(404);
      return proxy(request, options, { scriptName, pathInfo, scriptFilename: root + scriptName, documentRoot: root, client: async () => options.client }, query);
    },
  };
}

/** Parses `PREFIX=ADDRESS` (e.g. "/php=127.0.0.1:9000" or "/=unix:/run/php/php-fpm.sock"). */
export function parsePass(spec: string): { prefix: string; address: string } {
  const eq = spec.indexOf('=');
  const prefix = eq === -1 ? '' : spec.slice(0, eq);
  const address = eq === -1 ? '' : spec.slice(eq + 1);
  if (!prefix.startsWith('/') || !address) throw new TypeError(`--fcgi-pass must be PREFIX=ADDRESS, e.g. /php=127.0.0.1:9000, got ${JSON.stringify(spec)}`);
  return { prefix: prefix.replace(/\/+$/, ''), address };
}

export interface FastCGIRoutesOptions extends ProxyCommon {
  /** The fcgi/ directory; a missing one serves nothing at /fcgi/. */
  fcgiDir: string;
  procs: number;
  /** PREFIX=ADDRESS specs. */
  pass: readonly string[];
  /** The document root for --fcgi-pass; default the working directory. */
  root?: string;
  /** Seconds for an upstream's first byte and for silence mid-response. */
  timeoutSeconds: number;
  /** Deadline for a graceful stop of the app processes. */
  shutdownMs?: number;
}

export interface FastCGIRoutes {
  routes: Route[];
  manager: ProcessManager;
  /** Where /fcgi/ apps come from, when the directory exists. */
  fcgiDir: string | undefined;
  stop(deadlineMs?: number): Promise<void>;
}

/** Builds the /fcgi/ route and one route per --fcgi-pass, sharing the serve command's limits. */
export function createFastCGIRoutes(options: FastCGIRoutesOptions): FastCGIRoutes {
  const timeouts: Partial<FastCGIClientOptions> = { firstByteTimeoutMs: options.timeoutSeconds * 1000, idleTimeoutMs: options.timeoutSeconds * 1000 };
  const manager = new ProcessManager({ procs: options.procs, shutdownMs: options.shutdownMs, client: timeouts });
  const routes: Route[] = [];
  const common: ProxyCommon = { serverSoftware: options.serverSoftware, maxBody: options.maxBody, passAuth: options.passAuth, maxRedirects: options.maxRedirects };
  const fcgiDir = path.resolve(options.fcgiDir);
  const hasDir = fs.statSync(fcgiDir, { throwIfNoEntry: false })?.isDirectory() === true;
  if (hasDir) routes.push(fcgiAppsRoute({ ...common, dir: fcgiDir, manager }));
  else logInfo(`fastcgi: no directory ${fcgiDir}: nothing is served at /fcgi/`);
  const clients: FastCGIClient[] = [];
  const root = path.resolve(options.root ?? '.');
  for (const spec of options.pass) {
    const { prefix, address } = parsePass(spec);
    const client = new FastCGIClient({ address, ...timeouts });
    clients.push(client);
    routes.push(fcgiPassRoute({ ...common, prefix, client, root }));
    logInfo(`fastcgi: ${prefix || '/'} goes to ${client.name} (document root ${root})`);
  }
  return {
    routes,
    manager,
    fcgiDir: hasDir ? fcgiDir : undefined,
    async stop(deadlineMs) {
      await manager.stop(deadlineMs);
      for (const client of clients) client.close();
    },
  };
}
