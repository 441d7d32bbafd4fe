// Runs wrk against a URL and reads its summary: requests/s, p50 and p99 (with --latency), and errors of every kind it reports.
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { findPeer } from '../peers/index.ts';

const execFileAsync = promisify(execFile);

export interface WrkSample {
  rps: number;
  p50Ms: number;
  p99Ms: number;
  /** Non-2xx/3xx answers plus socket errors (connect, read, write, timeout). */
  errors: number;
}

function toMs(text: string): number {
  const m = /^([\d.]+)(us|ms|s)$/.exec(text.trim());
  if (!m) return NaN;
  const n = Number(m[1]);
  return m[2] === 'us' ? n / 1000 : m[2] === 's' ? n * 1000 : n;
}

/** Parses wrk's report (run with --latency for the percentiles). */
function parseWrk(text: string): WrkSample {
  const rps = Number(/Requests\/sec:\s+([\d.]+)/.exec(text)?.[1]);
  if (!Number.isFinite(rps)) throw new Error(`wrk: no Requests/sec in its output:\n${text}`);
  const non2xx = Number(/Non-2xx or 3xx responses:\s+(\d+)/.exec(text)?.[1] ?? 0);
  const socket = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(text);
  return {
    rps,
    p50Ms: toMs(/^\s+50%\s+(\S+)/m.exec(text)?.[1] ?? ''),
    p99Ms: toMs(/^\s+99%\s+(\S+)/m.exec(text)?.[1] ?? ''),
    errors: non2xx + (socket ? socket.slice(1).reduce((n, v) => n + Number(v), 0) : 0),
  };
}

/** `wrk -tT -cC -dSs --latency URL`. */
export async function runWrk(url: string, options: { threads: number; connections: number; seconds: number; /** taskset CPU list to run wrk on. */ cpus?: string }): Promise<WrkSample> {
  const wrk = findPeer('wrk') ?? 'wrk';
  const args = [`-t${options.threads}`, `-c${options.connections}`, `-d${options.seconds}s`, '--latency', url];
  const [command, argv] = options.cpus === undefined ? [wrk, args] : ['taskset', ['-c', options.cpus, wrk, ...args]];
  const { stdout } = await execFileAsync(command, argv, { timeout: (options.seconds + 30) * 1000 }).catch((err: Error & { stderr?: string }) => {
    throw new Error(`wrk failed: ${err.stderr || err.message}`);
  });
  return parseWrk(stdout);
}
