// Watches the server's processes while a soak runs: resident memory, open file descriptors, live children and zombies, from /proc.
import fs from 'node:fs';
import { median } from '../bench/histogram.ts';
import { clockTicksPerSecond, readAllStats, readCmdline, treeOf, type ProcStat } from '../bench/proc-stats.ts';

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

/**
 * A series of samples taken after warm-up: its level at the start and at the end (each the median
 * of a tenth of the samples, so one spike moves neither) and the growth from one to the other.
 */
export function summarise(values: number[]): SeriesSummary {
  const tenth = Math.max(1, Math.ceil(values.length / 10));
  const baseline = values.length ? median(values.slice(0, tenth)) : 0;
  const final = values.length ? median(values.slice(-tenth)) : 0;
  return {
    baseline,
    final,
    min: Math.min(...values),
    max: Math.max(...values),
    growth: baseline > 0 ? final / baseline - 1 : 0,
  };
}

export interface MachineSummary {
  /** Share of the machine's CPU time that was busy during the run, 0..1. */
  busy: number;
  /** Share of the machine's CPU time used by this run's own processes (this one and everything it started). */
  ours: number;
  /** Other commands by CPU seconds used during the run, busiest first. */
  others: Array<{ command: string; cpuSeconds: number }>;
}

function readCpuTotals(): { busy: number; total: number } {
  try {
    const line = fs.readFileSync('/proc/stat', 'latin1').split('\n', 1)[0]!;
    const f = line.trim().split(/\s+/).slice(1).map(Number);
    const total = f.reduce((a, b) => a + b, 0);
    const idle = (f[3] ?? 0) + (f[4] ?? 0);
    return { busy: total - idle, total };
  } catch {
    return { busy: 0, total: 0 };
  }
}

function commandName(pid: number): string {
  const cmd = readCmdline(pid).trim();
  return (cmd || `pid ${pid}`).replace(/\s+/g, ' ').slice(0, 90);
}


/**
 * What else the machine did during a run: the busy share of all CPUs from /proc/stat, the share of
 * this process's tree, and, by command, the CPU time of the other processes seen by the samples.
 */
export class MachineWatcher {
  private timer: NodeJS.Timeout | undefined;
  private readonly first = new Map<string, number>();
  private readonly last = new Map<string, { ticks: number; command: string }>();
  private startCpu = readCpuTotals();
  private startOurs = 0;
  private endOurs = 0;
  private endCpu = this.startCpu;

  start(intervalMs = 2000): void {
    this.startCpu = readCpuTotals();
    this.startOurs = this.sample(true);
    this.timer = setInterval(() => this.sample(false), intervalMs);
    this.timer.unref();
  }

  private sample(initial: boolean): number {
    const all = readAllStats();
    const ours = new Set(treeOf([process.pid], all).map((s) => s.pid));
    let oursTicks = 0;
    for (const s of all.values()) {
      if (ours.has(s.pid)) {
        oursTicks += s.selfTicks + s.childTicks;
        continue;
      }
      // Others by their own time only: a parent's reaped children (cutime) would count them twice,
      // and init collects every orphan's. Processes shorter than a sample interval are missed here,
      // but not in the machine's busy share.
      const ticks = s.selfTicks;
      const key = `${s.pid}/${s.startTime}`;
      // A process first seen after the start began during the run: all its time counts.
      if (!this.first.has(key)) this.first.set(key, initial ? ticks : 0);
      const previous = this.last.get(key);
      this.last.set(key, { ticks: Math.max(ticks, previous?.ticks ?? 0), command: previous?.command ?? commandName(s.pid) });
    }
    return oursTicks;
  }

  stop(): MachineSummary {
    if (this.timer) clearInterval(this.timer);
    this.endOurs = this.sample(false);
    this.endCpu = readCpuTotals();
    const byCommand = new Map<string, number>();
    for (const [key, { ticks, command }] of this.last) {
      const used = ticks - (this.first.get(key) ?? 0);
      if (used > 0) byCommand.set(command, (byCommand.get(command) ?? 0) + used);
    }
    const hz = clockTicksPerSecond();
    const total = Math.max(1, this.endCpu.total - this.startCpu.total);
    return {
      busy: (this.endCpu.busy - this.startCpu.busy) / total,
      // Our tree's ticks include reaped children (cutime) only once they are reaped: close enough.
      ours: Math.min(1, Math.max(0, this.endOurs - this.startOurs) / total),
      others: [...byCommand]
        .map(([command, ticks]) => ({ command, cpuSeconds: Math.round(ticks / hz) }))
        .filter((o) => o.cpuSeconds >= 1)
        .sort((a, b) => b.cpuSeconds - a.cpuSeconds),
    };
  }
}
