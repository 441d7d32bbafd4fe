// Finding the external peer programs (nginx, php-fpm, cgi-fcgi...) and skipping or failing tests that need a missing one.
import fs from 'node:fs';
import path from 'node:path';
import type { TestContext } from 'node:test';

export interface PeerInfo {
  /** The Debian package that provides it. */
  package: string;
  /** Executable names to look for, in order; absent for files such as Apache modules. */
  binaries?: readonly string[];
  /** An absolute file whose presence means the peer is installed (Apache modules). */
  file?: string;
}

export const PEERS: Readonly<Record<string, PeerInfo>> = {
  nginx: { package: 'nginx', binaries: ['nginx'] },
  apache2: { package: 'apache2', binaries: ['apache2'] },
  'php-fpm': { package: 'php8.2-fpm', binaries: ['php-fpm8.2', 'php-fpm'] },
  'php-fpm8.2': { package: 'php8.2-fpm', binaries: ['php-fpm8.2'] },
  'cgi-fcgi': { package: 'libfcgi-bin', binaries: ['cgi-fcgi'] },
  fcgiwrap: { package: 'fcgiwrap', binaries: ['fcgiwrap'] },
  'spawn-fcgi': { package: 'spawn-fcgi', binaries: ['spawn-fcgi'] },
  wrk: { package: 'wrk', binaries: ['wrk'] },
  lighttpd: { package: 'lighttpd', binaries: ['lighttpd'] },
  python3: { package: 'python3', binaries: ['python3'] },
  'systemd-socket-activate': { package: 'systemd', binaries: ['systemd-socket-activate'] },
  'docker-compose': { package: 'docker-compose', binaries: ['docker-compose'] },
  mod_fcgid: { package: 'libapache2-mod-fcgid', file: '/usr/lib/apache2/modules/mod_fcgid.so' },
  mod_proxy_fcgi: { package: 'apache2', file: '/usr/lib/apache2/modules/mod_proxy_fcgi.so' },
  mod_authnz_fcgi: { package: 'apache2', file: '/usr/lib/apache2/modules/mod_authnz_fcgi.so' },
  mod_cgid: { package: 'apache2', file: '/usr/lib/apache2/modules/mod_cgid.so' },
};

function isExecutable(file: string): boolean {
  try {
    fs.accessSync(file, fs.constants.X_OK);
    return fs.statSync(file).isFile();
  } catch {
    return false;
  }
}

/** Absolute path of a peer (a name from PEERS, or any executable name), or undefined when not installed. */
export function findPeer(name: string): string | undefined {
  const info = PEERS[name];
  if (info?.file) return fs.existsSync(info.file) ? info.file : undefined;
  // sbin directories are often missing from a non-root PATH, yet nginx and php-fpm live there.
  const dirs = [...(process.env.PATH ?? '').split(path.delimiter).filter(Boolean), '/usr/local/sbin', '/usr/local/bin', '/usr/sbin', '/usr/bin', '/sbin', '/bin'];
  for (const binary of info?.binaries ?? [name]) {
    if (path.isAbsolute(binary)) {
      if (isExecutable(binary)) return binary;
      continue;
    }
    for (const dir of dirs) {
      const candidate = path.join(dir, binary);
      if (isExecutable(candidate)) return candidate;
    }
  }
  return undefined;
}

/** The apt package providing a peer, for install hints. */
export function peerPackage(name: string): string {
  return PEERS[name]?.package ?? name;
}

/**
 * For tests: the peer's path; when it is missing, fails under CI (CI=true), where a silently
 * skipped integration test would hide a broken setup, and skips the test elsewhere.
 * After a skip the caller must return: t.skip() does not end the test function.
 */
export function requirePeer(t: TestContext, name: string): string | undefined {
  return skipIfMissing(t, missingPeer([name])) ? undefined : findPeer(name);
}

/**
 * For a suite's before(): the first of `names` that is not installed, or undefined. Under CI
 * (CI=true) a missing one throws instead, as in requirePeer.
 */
export function missingPeer(names: readonly string[]): string | undefined {
  const missing = names.find((name) => !findPeer(name));
  if (missing && process.env.CI === 'true') throw new Error(`peers: ${missing} is required under CI but not installed: apt-get install ${peerPackage(missing)}`);
  return missing;
}

/** Skips the test when `missing` (from missingPeer) names a peer; the caller must return when this answers true. */
export function skipIfMissing(t: { skip: (message: string) => void }, missing: string | undefined): boolean {
  if (!missing) return false;
  t.skip(`install ${missing}: apt-get install ${peerPackage(missing)}`);
  return true;
}
