// CPU pinning with taskset: the load generator on the last CPU, the servers under test on the others, so neither starves the other.
import fs from 'node:fs';
import os from 'node:os';
import { spawnSync } from 'node:child_process';
import { treePids } from './proc-stats.ts';

export interface PinPlan {
  /** False when pinning is off; the reason says why. */
  enabled: boolean;
  reason: string;
  /** taskset CPU lists, e.g. "1" and "0". */
  loadCpus: string;
  serverCpus: string;
}

function hasTaskset(): boolean {
  const r = spawnSync('taskset', ['-p', String(process.pid)], { stdio: 'ignore' });
  return r.status === 0;
}

/**
 * Decides the split. With 2 CPUs, the load generator gets CPU 1 and the servers CPU 0: on a shared
 * core the generator's own work would show up as server latency. Set CGI_RUNNER_BENCH_PIN=0 to
 * leave scheduling to the kernel.
 */
export function planPinning(): PinPlan {
  const cpus = allowedCpus(process.pid) ?? [...Array(os.availableParallelism()).keys()];
  const off = (reason: string): PinPlan => ({ enabled: false, reason, loadCpus: cpus.join(','), serverCpus: cpus.join(',') });
  if (process.env.CGI_RUNNER_BENCH_PIN === '0') return off('pinning disabled by CGI_RUNNER_BENCH_PIN=0');
  if (process.platform !== 'linux') return off('pinning needs Linux');
  if (cpus.length < 2) return off(`only ${cpus.length} CPU available`);
  if (!hasTaskset()) return off('taskset not found (install util-linux)');
  return {
    enabled: true,
    reason: `load generator on CPU ${cpus.at(-1)}, servers on CPU ${cpus.slice(0, -1).join(',')}`,
    loadCpus: String(cpus.at(-1)),
    serverCpus: cpus.slice(0, -1).join(','),
  };
}

/** Pins every thread of one process; false if it is gone or taskset refused. */
export function pinPid(pid: number, cpus: string): boolean {
  const r = spawnSync('taskset', ['-a', '-p', '-c', cpus, String(pid)], { stdio: 'ignore' });
  return r.status === 0;
}

/** Pins a process tree. Processes forked later inherit the affinity of their (now pinned) parent. */
export function pinTree(roots: readonly number[], cpus: string): number {
  let pinned = 0;
  for (const pid of treePids(roots)) if (pinPid(pid, cpus)) pinned++;
  return pinned;
}

/** The CPUs a process may run on, from /proc/PID/status. */
export function allowedCpus(pid: number): number[] | undefined {
  let text: string;
  try {
    text = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  } catch {
    return undefined;
  }
  const m = /^Cpus_allowed_list:\s*(.+)$/m.exec(text);
  return m ? parseCpuList(m[1]!.trim()) : undefined;
}

/** "0-2,5" → [0, 1, 2, 5]. */
export function parseCpuList(list: string): number[] {
  const out: number[] = [];
  for (const part of list.split(',')) {
    const [a, b] = part.split('-').map(Number);
    if (a === undefined || !Number.isInteger(a)) continue;
    for (let c = a; c <= (b ?? a); c++) out.push(c);
  }
  return out;
}

/** A compact "what ran where" for the report, e.g. "0" or "0,1". */
export function describeAffinity(pids: readonly number[]): string {
  const sets = new Set<string>();
  for (const pid of pids) {
    const cpus = allowedCpus(pid);
    if (cpus) sets.add(cpus.join(','));
  }
  return [...sets].join(' | ') || 'unknown';
}
