// The benchmark's targets: for each, its mode, what it needs installed, how to start it, and where it answers (directly or behind the shared nginx).
import fs from 'node:fs';
import path from 'node:path';
import { serveNodeFlags } from '../node-flags.ts';
import { findPeer, peerPackage } from '../peers/availability.ts';
import { startApache } from '../peers/apache.ts';
import { startFcgiwrap } from '../peers/fcgiwrap.ts';
import { NGINX_FASTCGI_PARAMS } from '../peers/nginx.ts';
import { startPhpFpm } from '../peers/php-fpm.ts';
import { freePort, waitForPath, waitForPort } from '../peers/ports.ts';
import { startProcess, stop, waitUntilReady, type ManagedProcess } from '../peers/process.ts';
import { mkdirShared, writeShared } from '../peers/tempdir.ts';
import type { Mode } from './report.ts';

/** What every target shares: the repository, a scratch directory other users can enter, the CPU count. */
export interface TargetEnv {
  /** The repository root (cgi-bin/, fcgi/, src/). */
  root: string;
  /** A 0755 directory for sockets and copies of scripts. */
  dir: string;
  /** CPUs the servers may use (one when pinned on a 2-core machine). */
  serverCpuCount: number;
  /** CPUs of the machine: "one per core" pools size themselves by it, as they would when deployed. */
  machineCpuCount: number;
}

/** A location mounted in the shared nginx. */
export interface NginxMount {
  /** http{}-level text, e.g. an upstream block. */
  upstream?: string;
  /** The location block (its path is `path`). */
  location: string;
  /** The request path benchmarked through nginx. */
  path: string;
}

export interface StartedTarget {
  /** The URL to load when the target answers directly; absent when it sits behind the shared nginx. */
  url?: string;
  nginx?: NginxMount;
  /** Roots of the process trees that serve this target (the shared nginx is added when mounted). */
  roots: number[];
  stop(): Promise<void>;
}

export interface TargetSpec {
  name: string;
  mode: Mode;
  description: string;
  /** Peer programs (names known to src/peers/availability) that must be installed. */
  peers: readonly string[];
  /** Repository files the target runs. */
  files: readonly string[];
  start(env: TargetEnv): Promise<StartedTarget>;
}

/** The body every target answers with. */
export const HELLO_BODY = 'hello\n';

const CLI = 'src/cli.ts';

/**
 * Starts one of our own Node processes. Its stdout (access lines, one per request) goes to
 * /dev/null rather than through a pipe into this process: reading it would cost the load
 * generator's CPU.
 */
async function startNode(env: TargetEnv, name: string, args: string[], ready: (signal: AbortSignal) => Promise<void>, nodeFlags: readonly string[] = []): Promise<ManagedProcess> {
  const proc = await startProcess({
    name,
    command: process.execPath,
    args: [...nodeFlags, '--import', 'tsx', ...args],
    stdout: 'ignore',
    cwd: env.root,
    env: { ...process.env, NODE_ENV: 'production' },
  });
  await waitUntilReady(proc, ready);
  return proc;
}

async function startServe(env: TargetEnv, name: string): Promise<{ proc: ManagedProcess; port: number }> {
  const port = await freePort();
  const proc = await startNode(
    env,
    name,
    [CLI, 'serve', '--port', String(port), '--host', '127.0.0.1', '--cgi-dir', './cgi-bin', '--fcgi-dir', './fcgi'],
    (signal) => waitForPort(port, '127.0.0.1', 20_000, signal),
    serveNodeFlags,
  );
  return { proc, port };
}

async function startResponder(env: TargetEnv, name: string, listen: 'unix' | 'tcp'): Promise<{ proc: ManagedProcess; address: string }> {
  const address = listen === 'unix' ? path.join(env.dir, `${name}.sock`) : `127.0.0.1:${await freePort()}`;
  const proc = await startNode(env, name, [CLI, 'fcgi', '--listen', address, '--app', 'fcgi/hello.ts', '--no-access-log', '--socket-mode', '0666'], (signal) =>
    listen === 'unix' ? waitForPath(address, 20_000, signal) : waitForPort(Number(address.split(':')[1]), '127.0.0.1', 20_000, signal),
  );
  return { proc, address };
}

function serveCgi(name: string, script: string, description: string): TargetSpec {
  return {
    name,
    mode: 'cgi',
    description,
    peers: [],
    files: [`cgi-bin/${script}`, 'src/commands/serve.ts'],
    async start(env) {
      const { proc, port } = await startServe(env, name);
      return { url: `http://127.0.0.1:${port}/cgi-bin/${script}`, roots: [proc.pid], stop: () => stop(proc) };
    },
  };
}

/** A location that passes to a FastCGI upstream; `keepConn` keeps the upstream connection for the next request. */
function fastcgiLocation(locationPath: string, pass: string, keepConn: boolean, scriptFilename?: string): string {
  return `location = ${locationPath} {
  ${NGINX_FASTCGI_PARAMS.replace('$document_root$fastcgi_script_name', scriptFilename ?? '$document_root$fastcgi_script_name').replaceAll('\n', '\n  ')}
  fastcgi_pass ${pass};
  ${keepConn ? 'fastcgi_keep_conn on;' : ''}
}`;
}

function nginxResponder(name: string, listen: 'unix' | 'tcp', keepalive: boolean, description: string): TargetSpec {
  return {
    name,
    mode: 'fastcgi',
    description,
    peers: ['nginx'],
    files: ['fcgi/hello.ts', 'src/commands/fcgi.ts'],
    async start(env) {
      const { proc, address } = await startResponder(env, name, listen);
      const upstream = `bench_${name.replaceAll('-', '_')}`;
      const server = listen === 'unix' ? `unix:${address}` : address;
      return {
        nginx: {
          // keepalive N: idle upstream connections each nginx worker keeps; more than the client connections.
          upstream: `upstream ${upstream} {\n  server ${server};\n${keepalive ? '  keepalive 64;\n' : ''}}`,
          location: fastcgiLocation(`/${name}/hello`, upstream, keepalive),
          path: `/${name}/hello`,
        },
        roots: [proc.pid],
        stop: () => stop(proc),
      };
    },
  };
}

function phpFpm(name: string, children: (env: TargetEnv) => number, description: string): TargetSpec {
  return {
    name,
    mode: 'fastcgi',
    description,
    peers: ['nginx', 'php-fpm'],
    files: ['src/bench/assets/hello.php'],
    async start(env) {
      const docroot = await mkdirShared(path.join(env.dir, 'php'));
      const script = await writeShared(path.join(docroot, 'hello.php'), fs.readFileSync(path.join(env.root, 'src/bench/assets/hello.php')));
      const fpm = await startPhpFpm({ listen: 'unix', children: children(env), docroot, dir: await mkdirShared(path.join(env.dir, name)) });
      return {
        // php-fpm keeps a worker bound to a kept-alive connection, so with keepalive a pool of one
        // worker would stall: the usual setup, used here, is a connection per request.
        nginx: { location: fastcgiLocation(`/${name}/hello.php`, fpm.nginxAddress, false, script), path: `/${name}/hello.php` },
        roots: [fpm.pid],
        stop: () => fpm.stop(),
      };
    },
  };
}

/** A copy of cgi-bin/hello.sh in the scratch directory, where Apache's www-data children may run it. */
async function sharedHelloSh(env: TargetEnv): Promise<string> {
  const dir = await mkdirShared(path.join(env.dir, 'cgi'));
  const file = path.join(dir, 'hello.sh');
  if (!fs.existsSync(file)) await writeShared(file, fs.readFileSync(path.join(env.root, 'cgi-bin/hello.sh')), 0o755);
  return file;
}

export const TARGETS: readonly TargetSpec[] = [
  serveCgi('cgi-sh', 'hello.sh', 'cgi-bin/hello.sh through `serve`: a shell process per request, the process-start floor'),
  serveCgi('cgi-mjs', 'hello.mjs', 'cgi-bin/hello.mjs through `serve`: a Node process per request'),
  serveCgi('cgi-ts', 'hello.ts', 'cgi-bin/hello.ts through `serve`: the app of fcgi/hello.ts, a Node process with the TypeScript loader per request'),
  {
    name: 'fcgi-serve',
    mode: 'fastcgi',
    description: 'fcgi/hello.ts through `serve` and its own FastCGI client: a persistent responder, no nginx',
    peers: [],
    files: ['fcgi/hello.ts', 'src/commands/serve.ts'],
    async start(env) {
      const { proc, port } = await startServe(env, 'fcgi-serve');
      return { url: `http://127.0.0.1:${port}/fcgi/hello`, roots: [proc.pid], stop: () => stop(proc) };
    },
  },
  nginxResponder('fcgi-nginx-unix', 'unix', true, 'fcgi/hello.ts (`cgi-runner fcgi`) behind nginx on a unix socket, upstream keepalive'),
  nginxResponder('fcgi-nginx-tcp', 'tcp', true, 'fcgi/hello.ts (`cgi-runner fcgi`) behind nginx on TCP, upstream keepalive'),
  nginxResponder('fcgi-nginx-close', 'tcp', false, 'fcgi/hello.ts (`cgi-runner fcgi`) behind nginx on TCP, a new upstream connection per request'),
  phpFpm('php-fpm-1', () => 1, 'hello.php on php-fpm (one static worker) behind the same nginx, unix socket'),
  phpFpm('php-fpm-n', (env) => Math.max(1, env.machineCpuCount), "hello.php on php-fpm (one static worker per core of the machine) behind the same nginx, unix socket"),
  {
    name: 'fcgiwrap',
    mode: 'cgi',
    description: 'cgi-bin/hello.sh run by fcgiwrap (one preforked wrapper per core, a process per request) behind the same nginx',
    peers: ['nginx', 'fcgiwrap'],
    files: ['cgi-bin/hello.sh'],
    async start(env) {
      const script = await sharedHelloSh(env);
      const wrap = await startFcgiwrap({ children: Math.max(1, env.machineCpuCount), dir: await mkdirShared(path.join(env.dir, 'fcgiwrap')) });
      return {
        nginx: { location: fastcgiLocation('/fcgiwrap/hello.sh', wrap.nginxAddress, false, script), path: '/fcgiwrap/hello.sh' },
        roots: [wrap.pid],
        stop: () => wrap.stop(),
      };
    },
  },
  {
    name: 'apache-cgid',
    mode: 'cgi',
    description: 'cgi-bin/hello.sh on Apache httpd with mod_cgid (mpm_event), a process per request',
    peers: ['apache2', 'mod_cgid'],
    files: ['cgi-bin/hello.sh'],
    async start(env) {
      const script = await sharedHelloSh(env);
      const cgiDir = path.dirname(script);
      const apache = await startApache({
        modules: ['cgid', 'alias'],
        accessLog: false, // as the shared nginx: no target pays for an access log
        dir: await mkdirShared(path.join(env.dir, 'apache')),
        config: [
          `ScriptAlias /cgi-bin/ ${cgiDir}/`,
          `<Directory ${cgiDir}>`,
          '  Require all granted',
          '</Directory>',
          // The load generator keeps its connections for the whole run.
          'KeepAlive On',
          'MaxKeepAliveRequests 0',
          'KeepAliveTimeout 300',
        ].join('\n'),
      });
      return { url: `${apache.url}/cgi-bin/hello.sh`, roots: [apache.pid], stop: () => apache.stop() };
    },
  },
  {
    name: 'node-http',
    mode: 'http',
    description: 'a plain node:http server with the same body: the floor with no gateway at all',
    peers: [],
    files: ['src/bench/http-hello.ts'],
    async start(env) {
      const port = await freePort();
      const proc = await startNode(env, 'node-http', ['src/bench/http-hello.ts', '--port', String(port)], (signal) => waitForPort(port, '127.0.0.1', 20_000, signal));
      return { url: `http://127.0.0.1:${port}/`, roots: [proc.pid], stop: () => stop(proc) };
    },
  },
];

/** Why a target cannot run here (a missing peer or file), or undefined when it can. */
export function unavailableReason(spec: TargetSpec, root: string): string | undefined {
  if (process.platform !== 'linux') return 'the benchmark reads /proc and runs on Linux only';
  for (const peer of spec.peers) {
    if (!findPeer(peer)) return `${peer} is not installed (apt-get install ${peerPackage(peer)})`;
  }
  for (const file of spec.files) {
    if (!fs.existsSync(path.join(root, file))) return `${file} does not exist in this checkout`;
  }
  return undefined;
}

export function targetNames(): string[] {
  return TARGETS.map((t) => t.name);
}

/** Parses --targets: names separated by commas; throws a TypeError naming the unknown ones. */
export function selectTargets(list: string | undefined): TargetSpec[] {
  if (list === undefined || list === '' || list === 'all') return [...TARGETS];
  const names = list.split(',').map((s) => s.trim()).filter(Boolean);
  const unknown = names.filter((n) => !TARGETS.some((t) => t.name === n));
  if (unknown.length) throw new TypeError(`unknown target${unknown.length > 1 ? 's' : ''} ${unknown.join(', ')} (known: ${targetNames().join(', ')})`);
  return TARGETS.filter((t) => names.includes(t.name));
}

