// Starts the selected targets and the one nginx they share, pins them to the server CPUs, checks each answers, and stops everything.
import http from 'node:http';
import os from 'node:os';
import { startNginx, type NginxServer } from '../peers/nginx.ts';
import { makeTempDir, mkdirShared, type TempDir } from '../peers/tempdir.ts';
import { pinTree, describeAffinity } from './pinning.ts';
import { survivors, treeOf, treePids } from './proc-stats.ts';
import { HELLO_BODY, unavailableReason, type StartedTarget, type TargetEnv, type TargetSpec } from './targets.ts';
import type { Mode } from './report.ts';

export interface RunningTarget {
  name: string;
  mode: Mode;
  description: string;
  url: string;
  /** Roots of the serving process trees, the shared nginx included when the target sits behind it. */
  roots: number[];
  /** CPUs the target's processes may run on, after pinning. */
  cpus: string;
}

export interface Stack {
  targets: RunningTarget[];
  skipped: { target: string; reason: string }[];
  /** pid → start time of every process seen in a serving tree, filled by the samplers. */
  seen: Map<number, number>;
  stop(): Promise<void>;
}

export interface StackOptions {
  root: string;
  serverCpus: string | undefined;
  serverCpuCount: number;
  signal?: AbortSignal;
  /** Progress messages ("starting nginx…"). */
  log?: (line: string) => void;
}

/** One GET, for the smoke check before measuring: the status and the body. */
export function probe(url: string, timeoutMs = 20_000): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.get(url, { agent: false, timeout: timeoutMs }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8') }));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error(`no answer within ${timeoutMs} ms`)));
    req.on('error', reject);
  });
}

/**
 * Starts every available target. A target that is not installed, fails to start or answers
 * anything but 200 "hello\n" is skipped with the reason, so one broken peer does not sink the
 * whole comparison; the caller reports the skips.
 */
export async function startStack(specs: readonly TargetSpec[], options: StackOptions): Promise<Stack> {
  const log = options.log ?? (() => {});
  const temp: TempDir = await makeTempDir('cgi-runner-bench-');
  const env: TargetEnv = { root: options.root, dir: temp.path, serverCpuCount: options.serverCpuCount, machineCpuCount: os.cpus().length };
  const skipped: { target: string; reason: string }[] = [];
  const started: { spec: TargetSpec; started: StartedTarget }[] = [];
  const stoppers: (() => Promise<void>)[] = [];
  const seen = new Map<number, number>();
  let nginx: NginxServer | undefined;

  const stopAllStarted = async () => {
    const results = await Promise.allSettled([...stoppers.splice(0)].reverse().map((s) => s()));
    // CGI children of a stopped server may sit in their own process groups; none may outlive the run.
    await new Promise((r) => setTimeout(r, 50));
    for (const pid of survivors(seen)) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // Gone in the meantime.
      }
    }
    await temp.cleanup();
    const failed = results.flatMap((r) => (r.status === 'rejected' ? [(r.reason as Error).message] : []));
    if (failed.length) throw new Error(`bench: stopping targets: ${failed.join('; ')}`);
  };

  try {
    for (const spec of specs) {
      if (options.signal?.aborted) break;
      const reason = unavailableReason(spec, options.root);
      if (reason) {
        skipped.push({ target: spec.name, reason });
        continue;
      }
      log(`starting ${spec.name}`);
      try {
        const s = await spec.start(env);
        stoppers.push(s.stop);
        started.push({ spec, started: s });
      } catch (err) {
        skipped.push({ target: spec.name, reason: `failed to start: ${firstLines((err as Error).message)}` });
      }
    }

    const mounts = started.filter((s) => s.started.nginx);
    if (mounts.length && !options.signal?.aborted) {
      log('starting nginx');
      try {
        nginx = await startNginx({
          dir: await mkdirShared(`${temp.path}/nginx`),
          workerProcesses: Math.max(1, options.serverCpuCount),
          errorLogLevel: 'warn',
          http: ({ port }) => nginxHttp(port, mounts.map((m) => m.started.nginx!)),
        });
        const n = nginx;
        stoppers.unshift(() => n.stop());
      } catch (err) {
        for (const m of mounts) skipped.push({ target: m.spec.name, reason: `nginx failed to start: ${firstLines((err as Error).message)}` });
      }
    }

    const targets: RunningTarget[] = [];
    for (const { spec, started: s } of started) {
      if (options.signal?.aborted) break;
      if (s.nginx && !nginx) continue;
      const url = s.url ?? `${nginx!.url}${s.nginx!.path}`;
      const roots = s.nginx ? [nginx!.pid, ...s.roots] : s.roots;
      if (options.serverCpus) pinTree(roots, options.serverCpus);
      for (const st of treeOf(roots)) seen.set(st.pid, st.startTime);
      const check = await smokeCheck(url);
      if (check) {
        skipped.push({ target: spec.name, reason: check });
        continue;
      }
      targets.push({ name: spec.name, mode: spec.mode, description: spec.description, url, roots, cpus: describeAffinity(treePids(roots)) });
    }
    return { targets, skipped, seen, stop: stopAllStarted };
  } catch (err) {
    await stopAllStarted().catch(() => {});
    throw err;
  }
}

async function smokeCheck(url: string): Promise<string | undefined> {
  try {
    const { status, body } = await probe(url);
    if (status !== 200) return `answered ${status} instead of 200: ${firstLines(body)}`;
    if (body !== HELLO_BODY) return `answered ${JSON.stringify(body.slice(0, 80))} instead of ${JSON.stringify(HELLO_BODY)}`;
    return undefined;
  } catch (err) {
    return `did not answer ${url}: ${(err as Error).message}`;
  }
}

/** The informative part of a failure: a Node stack trace starts with frames, the error line comes later. */
function firstLines(text: string): string {
  const lines = text.trim().split('\n').map((l) => l.trim()).filter(Boolean);
  const error = lines.findIndex((l) => /^(\w*Error\b|Error \[|error:)/.test(l) || /\b(ERROR|Error):/.test(l));
  const from = error >= 0 ? error : 0;
  const picked = lines.slice(from, from + 3).filter((l) => !l.startsWith('at '));
  return picked.join(' / ') + (lines.length > from + 3 ? ' …' : '');
}

/** The http{} content of the shared nginx: upstreams, and one server with a location per target. */
function nginxHttp(port: number, mounts: { upstream?: string; location: string }[]): string {
  return `${mounts.flatMap((m) => (m.upstream ? [m.upstream] : [])).join('\n')}

server {
  listen 127.0.0.1:${port};
  # Logging a line per request would be a cost no other target pays.
  access_log off;
  # The load generator holds its connections for the whole run.
  keepalive_timeout 300s;
  keepalive_requests 1000000;
${mounts.map((m) => '  ' + m.location.replaceAll('\n', '\n  ')).join('\n')}
}`;
}
