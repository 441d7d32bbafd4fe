// Builds a CGI script's environment from the facts of one request: the RFC 3875 §4.1 meta-variables, HTTP_* for the headers, and the de facto variables scripts rely on.

/** Everything the environment is built from, with no dependency on any server library. */
export interface CgiRequestFacts {
  method: string;
  /** The request-target exactly as received: path and query, still percent-encoded. */
  requestUri: string;
  /** e.g. "HTTP/1.1". */
  protocol: string;
  /**
   * Header names and values as received, alternating [name, value, name, value, …] (Node's
   * rawHeaders). Values hold one character per byte, as HTTP parsers deliver them.
   */
  headers: readonly string[];
  /** The URL path of the script, e.g. "/cgi-bin/env.pl". */
  scriptName: string;
  /** The rest of the path after the script, decoded; "" when there is none. */
  pathInfo: string;
  /** Absolute path of the script file. */
  scriptFilename: string;
  documentRoot: string;
  /** The query exactly as received, without "?"; "" when absent. */
  queryString: string;
  remoteAddr: string;
  remotePort: number;
  serverAddr: string;
  /** The port the request arrived on. */
  serverPort: number;
  /** Used as SERVER_NAME when the request has no Host header (default: serverAddr). */
  serverName?: string;
  tls: boolean;
  /** Length of the (de-chunked) body; undefined when the request has none. */
  contentLength?: number;
  serverSoftware: string;
  /** Known only when something in front authenticated the user. */
  authType?: string;
  remoteUser?: string;
  /** Pass Authorization to the script as HTTP_AUTHORIZATION (Apache's CGIPassAuth). */
  passAuth?: boolean;
  /** PATH for the script (the only variable of the runner's own environment it gets). */
  path?: string;
  /** Added last, e.g. REDIRECT_URL after a local redirect. */
  extra?: Record<string, string>;
}

// Headers that become something other than HTTP_*, or nothing. Content-Type and Content-Length
// are CONTENT_TYPE and CONTENT_LENGTH (§4.1.3, §4.1.2; §4.1.18 lets a server leave out the
// HTTP_ copies). Transfer-Encoding is gone once the body has been de-chunked. Proxy would become
// HTTP_PROXY, which many HTTP libraries read as their proxy setting (httpoxy, CVE-2016-5385).
const skipped = new Set(['content-type', 'content-length', 'transfer-encoding', 'proxy']);

const headerEnvNames = new Map<string, string>();

function envNameOf(lowerName: string): string {
  let name = headerEnvNames.get(lowerName);
  if (name === undefined) {
    name = 'HTTP_' + lowerName.toUpperCase().replace(/-/g, '_');
    if (headerEnvNames.size < 1000) headerEnvNames.set(lowerName, name);
  }
  return name;
}

// Values arrive one character per byte; the environment is written as UTF-8, so bytes that form
// UTF-8 are re-read as such and reach the script unchanged.
function bytesToUtf8(value: string): string {
  // eslint-disable-next-line no-control-regex
  return /[^\x00-\x7f]/.test(value) ? Buffer.from(value, 'latin1').toString('utf8') : value;
}

/**
 * The environment of a CGI script for one request. The result holds only CGI variables and PATH:
 * never anything of the runner's own environment. (A NUL byte in a value is refused where the
 * script is started: see CgiHost.run.)
 */
export function cgiEnv(facts: CgiRequestFacts): Record<string, string> {
  const env: Record<string, string> = {};
  if (facts.path) env.PATH = facts.path;
  // §4.1.4, §4.1.17, §4.1.16
  env.GATEWAY_INTERFACE = 'CGI/1.1';
  env.SERVER_SOFTWARE = facts.serverSoftware;
  env.SERVER_PROTOCOL = facts.protocol;
  // §4.1.12
  env.REQUEST_METHOD = facts.method;
  // §4.1.13: the script's URL path; §4.1.5: PATH_INFO decoded; §4.1.6: PATH_TRANSLATED is PATH_INFO
  // mapped onto the document tree, and unset when PATH_INFO is.
  env.SCRIPT_NAME = facts.scriptName;
  if (facts.pathInfo) {
    env.PATH_INFO = facts.pathInfo;
    env.PATH_TRANSLATED = facts.documentRoot.replace(/\/+$/, '') + facts.pathInfo;
  }
  // §4.1.7: the query as sent, never decoded; "" rather than unset when there is none.
  env.QUERY_STRING = facts.queryString;
  // §4.1.8
  env.REMOTE_ADDR = facts.remoteAddr;
  env.REMOTE_PORT = String(facts.remotePort);
  env.SERVER_ADDR = facts.serverAddr;
  // §4.1.15: the port the request came in on, not the one a Host header names.
  env.SERVER_PORT = String(facts.serverPort);
  env.REQUEST_URI = facts.requestUri;
  env.SCRIPT_FILENAME = facts.scriptFilename;
  env.DOCUMENT_ROOT = facts.documentRoot;
  env.REQUEST_SCHEME = facts.tls ? 'https' : 'http';
  // Only set for TLS: scripts test `!empty(HTTPS)`, so "off" would read as on to many of them.
  if (facts.tls) env.HTTPS = 'on';
  // php-cgi refuses to run without it (cgi.force_redirect); nginx's fastcgi_params sets it too.
  env.REDIRECT_STATUS = '200';
  // §4.1.2, §4.1.3: only when there is a body.
  if (facts.contentLength !== undefined) env.CONTENT_LENGTH = String(facts.contentLength);

  let host: string | undefined;
  const { headers } = facts;
  for (let i = 0; i + 1 < headers.length; i += 2) {
    const lower = headers[i]!.toLowerCase();
    let value = headers[i + 1]!;
    // A "_" in a name would let `X_Forwarded_For` pose as `X-Forwarded-For`, since both become
    // HTTP_X_FORWARDED_FOR. nginx drops such headers (underscores_in_headers off); so do we.
    if (lower.includes('_')) continue;
    if (lower === 'host' && host === undefined) host = value;
    if (skipped.has(lower)) {
      if (lower === 'content-type' && facts.contentLength !== undefined && env.CONTENT_TYPE === undefined) env.CONTENT_TYPE = bytesToUtf8(value);
      continue;
    }
    if (lower === 'authorization') {
      // Credentials stay with the server unless asked for (Apache's CGIPassAuth).
      if (!facts.passAuth) continue;
      if (facts.authType === undefined) {
        const scheme = /^([!#$%&'*+.^_`|~0-9A-Za-z-]+)/.exec(value);
        if (scheme) env.AUTH_TYPE = scheme[1]!;
      }
    }
    value = bytesToUtf8(value);
    const name = envNameOf(lower);
    const previous = env[name];
    // §4.1.18: repeated headers are joined as HTTP does; Cookie's own separator is "; " (RFC 6265 §5.4).
    if (previous !== undefined) env[name] = previous + (lower === 'cookie' ? '; ' : ', ') + value;
    else env[name] = value;
  }

  // §4.1.14: the host the client asked for, without the port (which is SERVER_PORT).
  env.SERVER_NAME = hostWithoutPort(host) || facts.serverName || facts.serverAddr;
  // §4.1.1, §4.1.11: only when known (authenticated by something in front, or, with passAuth, the
  // scheme of the credentials the script will check itself).
  if (facts.authType !== undefined) env.AUTH_TYPE = facts.authType;
  if (facts.remoteUser !== undefined) env.REMOTE_USER = facts.remoteUser;
  if (facts.extra) Object.assign(env, facts.extra);

  return env;
}

function hostWithoutPort(host: string | undefined): string {
  if (!host) return '';
  host = host.trim();
  if (host.startsWith('[')) {
    const end = host.indexOf(']');
    return end === -1 ? host : host.slice(0, end + 1);
  }
  const colon = host.indexOf(':');
  return colon === -1 ? host : host.slice(0, colon);
}

/**
 * The ISINDEX rule of RFC 3875 §4.4: a query without an unencoded "=" is split on "+" and each
 * part, decoded, becomes a command-line argument. Returns [] when the rule does not apply.
 * Off unless asked for: php-cgi read such arguments as its own options (CVE-2012-1823).
 */
export function isindexArgs(queryString: string): string[] {
  if (!queryString || queryString.includes('=')) return [];
  const args: string[] = [];
  for (const part of queryString.split('+')) {
    let arg: string;
    try {
      arg = decodeURIComponent(part);
    } catch {
      // §4.4: a query that does not decode is not a search string; no arguments at all.
      return [];
    }
    if (arg.includes('\0')) return [];
    args.push(arg);
  }
  return args;
}
