// Maps a request path to a script inside the CGI directory: decode, remove dot segments, then walk the path to the longest prefix that is an executable regular file; the rest is PATH_INFO (RFC 3875 §3.3, §4.1.5).
import fs from 'node:fs';
import path from 'node:path';

export interface ScriptLocation {
  /** The URL path of the script, e.g. "/cgi-bin/env.pl" (SCRIPT_NAME). */
  scriptName: string;
  /** The decoded rest of the path, "" when there is none (PATH_INFO). */
  pathInfo: string;
  /** Absolute path of the script inside the directory, symlinks not expanded (SCRIPT_FILENAME). */
  file: string;
  /** The script's file name, e.g. "env.pl". */
  name: string;
}

export type Resolution = ({ ok: true } & ScriptLocation) | { ok: false; status: 400 | 403 | 404; reason: string; /** The path leads out of the directory (through a symlink). */ outside?: true };

export interface ScriptDirectory {
  /** Absolute path of the directory, as given. */
  readonly dir: string;
  /** Its real path, against which symlink targets are checked. */
  readonly realDir: string;
  /** The URL path it is served at, without a trailing slash, e.g. "/cgi-bin". */
  readonly prefix: string;
  /** Allow symlinks whose target is outside the directory. */
  readonly followSymlinks: boolean;
  /** The prefix split on "/": ["", "cgi-bin"] (split once, not per request). */
  readonly prefixSegments: readonly string[];
}

export function scriptDirectory(dir: string, prefix: string, followSymlinks = false): ScriptDirectory {
  const abs = path.resolve(dir);
  const stat = fs.statSync(abs, { throwIfNoEntry: false });
  if (!stat?.isDirectory()) throw new Error(`cgi: ${dir} is not a directory`);
  const trimmed = prefix.replace(/\/+$/, '');
  return { dir: abs, realDir: fs.realpathSync(abs), prefix: trimmed, followSymlinks, prefixSegments: trimmed.split('/') };
}

const hexDigit = (c: number): number => (c >= 48 && c <= 57 ? c - 48 : c >= 65 && c <= 70 ? c - 55 : c >= 97 && c <= 102 ? c - 87 : -1);

/**
 * Percent-decodes a URL path into a string (bytes read as UTF-8). Returns undefined for a
 * malformed escape or a NUL byte: such a path names nothing.
 */
export function decodePath(raw: string): string | undefined {
  if (!raw.includes('%')) return raw.includes('\0') ? undefined : raw;
  const bytes = Buffer.allocUnsafe(Buffer.byteLength(raw));
  let n = 0;
  for (let i = 0; i < raw.length; i++) {
    const c = raw.charCodeAt(i);
    if (c === 0x25) {
      const hi = hexDigit(raw.charCodeAt(i + 1));
      const lo = hexDigit(raw.charCodeAt(i + 2));
      if (hi < 0 || lo < 0) return undefined;
      bytes[n++] = hi * 16 + lo;
      i += 2;
    } else if (c < 0x80) {
      bytes[n++] = c;
    } else {
      n += bytes.write(raw[i]!, n);
    }
  }
  const decoded = bytes.toString('utf8', 0, n);
  return decoded.includes('\0') ? undefined : decoded;
}

/**
 * RFC 3986 §5.2.4 remove_dot_segments on "/"-separated segments; ".." never climbs above the root.
 * A final "." or ".." leaves a trailing slash, as in URL resolution.
 */
export function removeDotSegments(segments: string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < segments.length; i++) {
    const seg = segments[i]!;
    const last = i === segments.length - 1;
    if (seg === '.' || seg === '..') {
      if (seg === '..' && out.length > 1) out.pop();
      if (last) out.push('');
    } else {
      out.push(seg);
    }
  }
  return out;
}

function inside(dir: string, target: string): boolean {
  return target === dir || target.startsWith(dir.endsWith('/') ? dir : dir + '/');
}

/**
 * Resolves the path of a request (the part before "?", still percent-encoded) to a script.
 * Encoded dots, encoded slashes and backslashes are decoded into what they spell *before* dot
 * segments are removed and the walk starts, so "%2e%2e", "..%2f" and "..\\" cannot climb out.
 * Only executable regular files run; anything else is 404 (a file is never shown), a directory 403.
 */
export function resolveScript(root: ScriptDirectory, rawPath: string): Resolution {
  const decoded = decodePath(rawPath);
  if (decoded === undefined) return { ok: false, status: 400, reason: 'malformed or NUL escape in the path' };
  const segments = removeDotSegments(decoded.replace(/\\/g, '/').split('/'));
  const prefixSegments = root.prefixSegments;
  // ["", "cgi-bin", …]: after dot removal, the path must still be under the prefix.
  for (let i = 1; i < prefixSegments.length; i++) {
    if (segments[i] !== prefixSegments[i]) return { ok: false, status: 404, reason: 'outside the script directory' };
  }
  let dir = root.dir;
  let symlinked = false;
  const scriptParts: string[] = [];
  for (let i = prefixSegments.length; i < segments.length; i++) {
    const seg = segments[i]!;
    // An empty segment ("//", or a trailing "/") names the directory we are in.
    if (seg === '') {
      if (i === segments.length - 1) return { ok: false, status: 403, reason: 'a directory' };
      continue;
    }
    const candidate = dir + '/' + seg;
    let stat = fs.lstatSync(candidate, { throwIfNoEntry: false });
    if (!stat) return { ok: false, status: 404, reason: 'no such script' };
    if (stat.isSymbolicLink()) {
      symlinked = true;
      stat = fs.statSync(candidate, { throwIfNoEntry: false });
      if (!stat) return { ok: false, status: 404, reason: 'a dangling symlink' };
    }
    if (symlinked && !root.followSymlinks) {
      // The target (after every link on the way) must still be inside the directory.
      let real: string;
      try {
        real = fs.realpathSync(candidate);
      } catch {
        return { ok: false, status: 404, reason: 'no such script' };
      }
      if (!inside(root.realDir, real)) return { ok: false, status: 403, reason: 'a symlink to outside the script directory', outside: true };
    }
    scriptParts.push(seg);
    if (stat.isDirectory()) {
      if (i === segments.length - 1) return { ok: false, status: 403, reason: 'a directory' };
      dir = candidate;
      continue;
    }
    // Not shown, not run: a file without an execute bit, a socket or a device is as good as absent.
    if (!stat.isFile() || (stat.mode & 0o111) === 0) return { ok: false, status: 404, reason: 'not an executable file' };
    const rest = segments.slice(i + 1);
    return {
      ok: true,
      scriptName: root.prefix + '/' + scriptParts.join('/'),
      pathInfo: rest.length ? '/' + rest.join('/') : '',
      file: candidate,
      name: seg,
    };
  }
  return { ok: false, status: 403, reason: 'a directory' };
}
