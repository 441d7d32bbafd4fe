// Watches the server's processes while a soak runs: resident memory, open file descriptors, live children and zombies, from /proc.
import fs from 'node:fs';
import { readAllStats, treeOf, type ProcStat } from '../bench/proc-stats.ts';

export interface ProcSample {
  /** Milliseconds since the watcher started. */
  atMs: number;
  /** RSS of the watched processes themselves (not their short-lived children), bytes. */
  rssBytes: number;
  /** Open file descriptors of the watched processes. */
  fds: number;
  /** Live descendants (CGI scripts running, cluster workers). */
  children: number;
  /** Zombies among the descendants: pid and start time, to tell a lingering one from a new one. */
  zombies: Array<[pid: number, startTime: number]>;
}

export interface SeriesSummary {
  /** Median of the first tenth of the samples after warm-up. */
  baseline: number;
  /** Median of the last tenth. */
  final: number;
  min: number;
  max: number;
  /** final / baseline - 1. */
  growth: number;
}

export interface WatchSummary {
  samples: number;
  rss: SeriesSummary;
  fds: SeriesSummary;
  /** Zombies seen in two samples in a row (a transient one between exit and reaping is seen once at most). */
  lingeringZombies: number;
  /** The most zombies seen in one sample. */
  maxZombies: number;
}

export function countFds(pid: number): number {
  try {
    return fs.readdirSync(`/proc/${pid}/fd`).length;
  } catch {
    return 0;
  }
}

/** Live descendants and zombies below `roots`, not counting the roots. */
export function descendants(roots: readonly number[], all: Map<number, ProcStat> = readAllStats()): { live: ProcStat[]; zombies: ProcStat[] } {
  const rootSet = new Set(roots);
  const tree = treeOf(roots, all).filter((s) => !rootSet.has(s.pid));
  return { live: tree.filter((s) => s.state !== 'Z' && s.state !== 'X'), zombies: tree.filter((s) => s.state === 'Z') };
}

/**
 * Samples the processes `pids()` returns (it is called each time, so a restarted worker is
 * followed) and the trees below `roots`.
 */
export class ProcessWatcher {
  readonly samples: ProcSample[] = [];
  private timer: NodeJS.Timeout | undefined;
  private readonly started = performance.now();

  constructor(
    private readonly pids: () => number[],
    private readonly roots: () => number[],
  ) {}

  sample(): ProcSample {
    const all = readAllStats();
    let rssBytes = 0;
    let fds = 0;
    for (const pid of this.pids()) {
      const stat = all.get(pid);
      if (stat && stat.state !== 'Z') rssBytes += stat.rssBytes;
      fds += countFds(pid);
    }
    const { live, zombies } = descendants(this.roots(), all);
    const sample: ProcSample = {
      atMs: performance.now() - this.started,
      rssBytes,
      fds,
      children: live.length,
      zombies: zombies.map((z) => [z.pid, z.startTime]),
    };
    this.samples.push(sample);
    return sample;
  }

  start(intervalMs: number): void {
    this.sample();
    this.timer = setInterval(() => this.sample(), intervalMs);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }

  /** The samples taken at or after `fromMs`, summarised. */
  summary(fromMs: number): WatchSummary {
    const after = this.samples.filter((s) => s.atMs >= fromMs);
    const used = after.length >= 2 ? after : this.samples;
    let lingering = 0;
    for (let i = 1; i < this.samples.length; i++) {
      const before = new Set(this.samples[i - 1]!.zombies.map(([pid, start]) => `${pid}/${start}`));
      lingering += this.samples[i]!.zombies.filter(([pid, start]) => before.has(`${pid}/${start}`)).length;
    }
    return {
      samples: used.length,
      rss: summarise(used.map((s) => s.rssBytes)),
      fds: summarise(used.map((s) => s.fds)),
      lingeringZombies: lingering,
      maxZombies: Math.max(0, ...this.samples.map((s) => s.zombies.length)),
    };
  }
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  if (sorted.length === 0) return 0;
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

export function summarise(values: number[]): SeriesSummary {
  const tenth = Math.max(1, Math.ceil(values.length / 10));
  const baseline = median(values.slice(0, tenth));
  const final = median(values.slice(-tenth));
  return {
    baseline,
    final,
    min: Math.min(...values),
    max: Math.max(...values),
    growth: baseline > 0 ? final / baseline - 1 : 0,
  };
}
