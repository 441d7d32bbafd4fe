// `fcgi --cgi-dir DIR`: an app that runs, per request, the CGI script the web server names in SCRIPT_FILENAME (what fcgiwrap does), through the same CGI host as `serve`.
import { Readable } from 'node:stream';
import { CgiHost, type CgiHostOptions } from '../cgi/host.ts';
import { removeDotSegments, resolveScript, scriptDirectory, type ScriptDirectory } from '../cgi/resolve.ts';
import type { App, AppContext } from '../handler.ts';
import { logError } from '../log.ts';
import { reasonPhrase } from '../response-output.ts';

export interface CgiDirOptions extends Pick<CgiHostOptions, 'maxScripts' | 'timeoutMs' | 'killGraceMs' | 'spawner'> {
  /** Only scripts inside this directory run. */
  dir: string;
  /** Pass HTTP_AUTHORIZATION to scripts (Apache's CGIPassAuth). */
  passAuth?: boolean;
  /** PATH given to scripts. */
  path?: string;
}

export interface CgiDirApp extends App {
  readonly host: CgiHost;
  readonly directory: ScriptDirectory;
  close(): Promise<void>;
}

export type ScriptTarget =
  | { ok: true; file: string; name: string; scriptName: string; pathInfo: string }
  | { ok: false; status: 400 | 403 | 404; reason: string };

// A variable the environment can carry: not empty, no "=" and no NUL.
const envName = /^[^=\0]+$/;
const nullBodyStatus = new Set([204, 205, 304]);

/**
 * The file the web server asks for. Apache's mod_proxy_fcgi sends SCRIPT_FILENAME as
 * `proxy:fcgi://host:port/path` (URL-escaped, sometimes with `?query`), so that prefix is stripped
 * and the path decoded. Without SCRIPT_FILENAME, DOCUMENT_ROOT + SCRIPT_NAME, as fcgiwrap does.
 */
export function requestedFile(params: Readonly<Record<string, string>>): { file: string; fromScriptName: boolean } | undefined {
  let file = params.SCRIPT_FILENAME;
  if (file) {
    const proxied = /^proxy:[a-z]+:\/\/[^/]*(\/[^?]*)?/i.exec(file);
    if (proxied) {
      file = proxied[1] ?? '/';
      try {
        file = decodeURIComponent(file);
      } catch {
        // Not an escaped path after all: used as it is.
      }
    }
    return { file, fromScriptName: false };
  }
  if (params.DOCUMENT_ROOT && params.SCRIPT_NAME) return { file: params.DOCUMENT_ROOT.replace(/\/+$/, '') + '/' + params.SCRIPT_NAME.replace(/^\/+/, ''), fromScriptName: true };
  return undefined;
}

/**
 * Maps a requested file path onto a script inside the directory: dot segments removed first, then
 * the same walk as `serve` (the longest leading part that is an executable file is the script; the
 * rest is PATH_INFO). Anything that ends up outside the directory is refused.
 */
export function locateScript(directory: ScriptDirectory, requested: string): ScriptTarget {
  if (!requested.startsWith('/')) return { ok: false, status: 404, reason: 'not an absolute path' };
  if (requested.includes('\0')) return { ok: false, status: 400, reason: 'a NUL byte in the path' };
  const normalized = removeDotSegments(requested.replace(/\\/g, '/').split('/')).join('/');
  const dir = directory.dir;
  if (normalized !== dir && !normalized.startsWith(dir + '/')) return { ok: false, status: 404, reason: `outside ${dir}` };
  // resolveScript takes a URL path: "%" is escaped so that file names are taken literally.
  const resolution = resolveScript(directory, normalized.slice(dir.length).replace(/%/g, '%25') || '/');
  // A symlink out of the directory is outside it: 404, as for any other path outside.
  if (!resolution.ok) return { ok: false, status: resolution.outside ? 404 : resolution.status, reason: resolution.reason };
  return { ok: true, file: resolution.file, name: resolution.name, scriptName: resolution.scriptName, pathInfo: resolution.pathInfo };
}

function plainResponse(status: number, detail?: string): Response {
  return new Response(`${status} ${reasonPhrase(status)}\n${detail ? detail + '\n' : ''}`, { status, headers: { 'content-type': 'text/plain; charset=utf-8' } });
}

export async function createCgiDirApp(options: CgiDirOptions): Promise<CgiDirApp> {
  const directory = scriptDirectory(options.dir, '');
  const host = await CgiHost.start({ maxScripts: options.maxScripts, timeoutMs: options.timeoutMs, killGraceMs: options.killGraceMs, spawner: options.spawner });

  /** Our error lines name the request (its FastCGI id and URI) and the script, as the responder's own do. */
  const logFields = (context: AppContext, script?: string) => ({ requestId: context.requestId, target: script ?? options.dir, uri: context.params.REQUEST_URI });

  /** Refuses a request: the status for the client, and the reason for the web server's log and ours. */
  const refuse = (context: AppContext, status: number, reason: string, script?: string): Response => {
    const line = `fastcgi: ${reason}`;
    context.stderr?.(line);
    logError(line, logFields(context, script));
    return plainResponse(status);
  };

  async function fetch(request: Request, context: AppContext): Promise<Response> {
    const params = context.params;
    const requested = requestedFile(params);
    if (!requested) return refuse(context, 404, 'neither SCRIPT_FILENAME nor DOCUMENT_ROOT and SCRIPT_NAME were sent');
    const target = locateScript(directory, requested.file);
    if (!target.ok) {
      const what = requested.fromScriptName ? 'DOCUMENT_ROOT + SCRIPT_NAME' : 'SCRIPT_FILENAME';
      return refuse(context, target.status, `refusing ${what} ${JSON.stringify(requested.file)}: ${target.reason}`);
    }

    // The environment: what the web server sent (its CGI variables and HTTP_* headers) and PATH,
    // nothing of ours; with the rules of `serve` for Proxy and Authorization.
    const env: Record<string, string> = {};
    if (options.path) env.PATH = options.path;
    for (const name in params) if (envName.test(name)) env[name] = params[name]!;
    // httpoxy (CVE-2016-5385): a client's Proxy header must not become the scripts' HTTP_PROXY.
    delete env.HTTP_PROXY;
    // Credentials stay with the server unless asked for, except for an Authorizer, whose job they are.
    if (!options.passAuth && context.role !== 'authorizer') delete env.HTTP_AUTHORIZATION;
    env.GATEWAY_INTERFACE ??= 'CGI/1.1';
    // As libfcgi (and so fcgiwrap) sets it: a script serving both roles can tell them apart.
    env.FCGI_ROLE = context.role.toUpperCase();
    env.SCRIPT_FILENAME = target.file;
    // The walk found PATH_INFO inside the path (no fastcgi_split_path_info, or Apache's proxy:fcgi
    // path): SCRIPT_NAME loses it and PATH_INFO gets it (RFC 3875 §4.1.5, §4.1.13).
    if (target.pathInfo) {
      const scriptName = params.SCRIPT_NAME ?? '';
      if (scriptName.endsWith(target.pathInfo)) env.SCRIPT_NAME = scriptName.slice(0, scriptName.length - target.pathInfo.length);
      env.PATH_INFO = target.pathInfo;
      if (params.DOCUMENT_ROOT) env.PATH_TRANSLATED = params.DOCUMENT_ROOT.replace(/\/+$/, '') + target.pathInfo;
    }

    // §6.3 Authorizer: the script runs at once, with no body. A Responder's body is STDIN.
    const length = Number(params.CONTENT_LENGTH);
    const hasBody = context.role === 'responder' && request.body !== null && (Number.isSafeInteger(length) ? length > 0 : true);
    const body = hasBody ? Readable.fromWeb(request.body as import('node:stream/web').ReadableStream<Uint8Array>) : null;
    const outcome = await host.run({
      file: target.file,
      env,
      body,
      signal: context.signal,
      nph: target.name.startsWith('nph-'),
      onStderrLine: (line) => logError(`${target.name}: ${line}`, logFields(context, target.file)),
      // A response cut short is the body's error, which the responder reports (STDERR and the log).
      onLateKill: (message, cut) => {
        if (!cut) logError(message, logFields(context, target.file));
      },
    });
    if (outcome.kind === 'error') {
      body?.resume();
      if (context.signal.aborted) return plainResponse(503);
      return refuse(context, outcome.status, outcome.message.replace(/^cgi: /, `${target.name}: `), target.file);
    }
    const { head } = outcome;
    const headers = new Headers();
    for (const [name, value] of head.headers) {
      try {
        headers.append(name, value);
      } catch {
        // A field Fetch cannot carry (the parser already refused control characters): dropped.
      }
    }
    // A local redirect (§6.2.2) is the web server's to follow; nginx cannot, so the client is sent there.
    const status = head.kind === 'local-redirect' ? 302 : head.status;
    if (nullBodyStatus.has(status) || params.REQUEST_METHOD === 'HEAD') {
      outcome.discard();
      return new Response(null, { status, statusText: head.reason, headers });
    }
    return new Response(Readable.toWeb(outcome.body) as ReadableStream<Uint8Array>, { status, statusText: status === head.status ? head.reason : reasonPhrase(status), headers });
  }

  return {
    fetch,
    host,
    directory,
    close: () => host.close(),
  };
}
