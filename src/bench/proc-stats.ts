// Server-side CPU time and peak RSS of process trees, read from /proc: utime+stime of live members plus cutime+cstime for children already reaped.
import fs from 'node:fs';
import { execFileSync } from 'node:child_process';

export interface ProcStat {
  pid: number;
  ppid: number;
  state: string;
  /** utime + stime, in clock ticks. */
  selfTicks: number;
  /** cutime + cstime: CPU of children this process has waited for, in clock ticks. */
  childTicks: number;
  /** Resident set size in bytes. */
  rssBytes: number;
  /** Start time in clock ticks since boot: with the pid, identifies a process even after pid reuse. */
  startTime: number;
  /** The command name (field 2). */
  comm: string;
  /** Virtual memory size in bytes. */
  vsizeBytes: number;
}

let ticksPerSecond: number | undefined;
let pageSize: number | undefined;

function sysconf(name: string, fallback: number): number {
  try {
    const n = Number(execFileSync('getconf', [name], { encoding: 'utf8' }).trim());
    return Number.isInteger(n) && n > 0 ? n : fallback;
  } catch {
    return fallback;
  }
}

/** USER_HZ, the unit of the CPU fields in /proc/PID/stat (100 on every common Linux). */
export function clockTicksPerSecond(): number {
  return (ticksPerSecond ??= sysconf('CLK_TCK', 100));
}

function pageBytes(): number {
  return (pageSize ??= sysconf('PAGESIZE', 4096));
}

/** True when /proc has what these measurements need (Linux). */
export function procAvailable(): boolean {
  return fs.existsSync('/proc/self/stat');
}

/** Parses /proc/PID/stat; undefined when the process is gone. */
export function readStat(pid: number): ProcStat | undefined {
  let text: string;
  try {
    text = fs.readFileSync(`/proc/${pid}/stat`, 'latin1');
  } catch {
    return undefined;
  }
  // The command name (field 2) may contain spaces and parentheses: the fields start after the last ')'.
  const close = text.lastIndexOf(')');
  const f = text.slice(close + 2).split(' ');
  // f[0] is field 3 (state); utime is field 14, so f[11]; stime f[12], cutime f[13], cstime f[14], rss (pages) field 24 = f[21].
  return {
    pid,
    ppid: Number(f[1]),
    state: f[0]!,
    selfTicks: Number(f[11]) + Number(f[12]),
    childTicks: Number(f[13]) + Number(f[14]),
    rssBytes: Number(f[21]) * pageBytes(),
    startTime: Number(f[19]),
    comm: text.slice(text.indexOf('(') + 1, close),
    vsizeBytes: Number(f[20]),
  };
}

/** The command line of a process, arguments separated by spaces; empty once it is gone. */
export function readCmdline(pid: number): string {
  try {
    return fs.readFileSync(`/proc/${pid}/cmdline`, 'latin1').replace(/\0/g, ' ');
  } catch {
    return '';
  }
}

/** Every process on the machine, read once: a scan costs ~1.5 ms for 100 processes. */
export function readAllStats(): Map<number, ProcStat> {
  const all = new Map<number, ProcStat>();
  for (const entry of fs.readdirSync('/proc')) {
    const c = entry.charCodeAt(0);
    if (c < 48 || c > 57) continue;
    const stat = readStat(Number(entry));
    if (stat) all.set(stat.pid, stat);
  }
  return all;
}

/**
 * The roots and all their descendants (zombies included: their CPU has not moved to the parent
 * yet), from a scan of all of /proc: complete, unlike the kernel's per-thread children lists, which
 * may leave out live children while others exit (proc(5)).
 */
export function treeOf(roots: readonly number[], all: Map<number, ProcStat> = readAllStats()): ProcStat[] {
  const children = new Map<number, ProcStat[]>();
  for (const stat of all.values()) {
    const list = children.get(stat.ppid);
    if (list) list.push(stat);
    else children.set(stat.ppid, [stat]);
  }
  const out: ProcStat[] = [];
  const seen = new Set<number>();
  const stack = roots.filter((pid) => all.has(pid)).map((pid) => all.get(pid)!);
  while (stack.length) {
    const stat = stack.pop()!;
    if (seen.has(stat.pid)) continue;
    seen.add(stat.pid);
    out.push(stat);
    for (const child of children.get(stat.pid) ?? []) stack.push(child);
  }
  return out;
}

let childLists: boolean | undefined;

/** Whether the kernel lists each thread's children (/proc/PID/task/TID/children, CONFIG_PROC_CHILDREN). */
function childListsAvailable(): boolean {
  return (childLists ??= fs.existsSync(`/proc/self/task/${process.pid}/children`));
}

/** The children of a process, from the lists of all its threads; empty once it is gone. */
function childPidsOf(pid: number): number[] {
  let tids: string[];
  try {
    tids = fs.readdirSync(`/proc/${pid}/task`);
  } catch {
    return [];
  }
  const pids: number[] = [];
  for (const tid of tids) {
    let text: string;
    try {
      text = fs.readFileSync(`/proc/${pid}/task/${tid}/children`, 'latin1');
    } catch {
      continue; // the thread ended meanwhile
    }
    for (const entry of text.split(' ')) if (entry) pids.push(Number(entry));
  }
  return pids;
}

/**
 * The tree, walked down from the roots through the children lists: a few files where a scan reads
 * hundreds, for periodic samples that run in the load generator's process and must not stall it.
 * Good enough for a peak of RSS; CPU is read at the start and the end from complete scans.
 */
function sampleTree(roots: readonly number[]): ProcStat[] {
  if (!childListsAvailable()) return treeOf(roots);
  const out: ProcStat[] = [];
  const seen = new Set<number>();
  const stack = [...roots];
  while (stack.length) {
    const pid = stack.pop()!;
    if (seen.has(pid)) continue;
    seen.add(pid);
    const stat = readStat(pid);
    if (!stat) continue;
    out.push(stat);
    for (const child of childPidsOf(pid)) stack.push(child);
  }
  return out;
}

/** The pids of a tree, roots first. */
export function treePids(roots: readonly number[]): number[] {
  return treeOf(roots).map((s) => s.pid);
}

/**
 * CPU ticks a tree has used so far. A process's time is in its own utime+stime while it lives
 * (or is a zombie), and moves into its parent's cutime+cstime once reaped, so summing both over
 * the live tree counts every process exactly once, including CGI children that came and went.
 */
export function treeCpuTicks(tree: readonly ProcStat[]): number {
  let ticks = 0;
  for (const s of tree) ticks += s.selfTicks + s.childTicks;
  return ticks;
}

/**
 * The sum of RSS over a tree. A child that still shares its parent's memory (the runner's
 * clone(CLONE_VM) child before its execve, or a fork child before its exec) reports the parent's
 * RSS as its own: it has the parent's command name and exactly its virtual size, and is left out,
 * or a sample that caught two such children would count the runner three times.
 */
export function treeRssBytes(tree: readonly ProcStat[]): number {
  const byPid = new Map(tree.map((s) => [s.pid, s]));
  let bytes = 0;
  for (const s of tree) {
    if (s.state === 'Z') continue;
    const parent = byPid.get(s.ppid);
    if (parent && parent.comm === s.comm && parent.vsizeBytes === s.vsizeBytes) continue;
    bytes += s.rssBytes;
  }
  return bytes;
}

export interface TreeUsage {
  /** CPU time used by the tree during the window, in ms (10 ms resolution per process). */
  cpuMs: number;
  /** The largest sum of RSS over the tree seen by any sample (shared pages counted once per process). */
  peakRssBytes: number;
  samples: number;
}

/**
 * Samples a set of process trees while a measurement runs: CPU as the difference between the start
 * and the end, RSS as the peak of periodic samples. Short-lived CGI children are caught in the RSS
 * samples only when a sample falls in their lifetime, which at 100 ms intervals and a steady load
 * of such children is most samples.
 */
export class TreeSampler {
  private startTicks = 0;
  private peak = 0;
  private samples = 0;
  private timer: NodeJS.Timeout | undefined;

  /**
   * @param seen collects pid → start time of every process seen in the trees, so that whatever
   * outlives a stop can be found and killed without touching a process that reused a pid.
   */
  constructor(
    private readonly roots: readonly number[],
    private readonly intervalMs = 100,
    private readonly seen?: Map<number, number>,
  ) {}

  start(): void {
    const tree = this.observe(treeOf(this.roots));
    this.startTicks = treeCpuTicks(tree);
    this.peak = treeRssBytes(tree);
    this.samples = 1;
    this.timer = setInterval(() => this.sample(), this.intervalMs);
    this.timer.unref();
  }

  private observe(tree: ProcStat[]): ProcStat[] {
    if (this.seen) for (const s of tree) this.seen.set(s.pid, s.startTime);
    return tree;
  }

  private sample(tree = sampleTree(this.roots)): ProcStat[] {
    this.observe(tree);
    this.peak = Math.max(this.peak, treeRssBytes(tree));
    this.samples++;
    return tree;
  }

  stop(): TreeUsage {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    const tree = this.sample(treeOf(this.roots));
    const ticks = treeCpuTicks(tree) - this.startTicks;
    return { cpuMs: (Math.max(0, ticks) * 1000) / clockTicksPerSecond(), peakRssBytes: this.peak, samples: this.samples };
  }
}

/** The processes of `seen` that still run (same pid and same start time), zombies excluded. */
export function survivors(seen: ReadonlyMap<number, number>): number[] {
  const alive: number[] = [];
  for (const [pid, startTime] of seen) {
    const stat = readStat(pid);
    if (stat && stat.startTime === startTime && stat.state !== 'Z' && stat.state !== 'X') alive.push(pid);
  }
  return alive;
}
