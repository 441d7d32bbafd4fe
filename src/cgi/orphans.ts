// Ends the processes scripts leave behind outside their process group: the runner becomes a child subreaper (Linux), so such orphans become its children, and a sweep shortly after scripts exit sends them SIGTERM, then SIGKILL, and reaps them.
//
// A daemon's double fork and setsid() escape the kill of the script's process group. As subreaper
// the runner adopts them when their parent exits. Which of its children are adopted? Not the
// scripts (the spawner knows them), not the processes Node itself starts (child_process, tracked
// below), and not those that were already there when adoption began. What remains was adopted.
import { ChildProcess } from 'node:child_process';
import fs from 'node:fs';

/** What the sweep needs from the native addon. */
export interface ReaperCalls {
  /** PR_SET_CHILD_SUBREAPER on or off; returns whether it was on. */
  setSubreaper(on: boolean): boolean;
  /** Our children (of the main thread, where adopted orphans and child_process children go), zombies included, except the scripts (even those whose spawn is still completing). */
  otherChildren(): number[];
  /** waitpid(pid, WNOHANG): true once reaped (or not our child), false while it runs. */
  reap(pid: number): boolean;
  /** Every script started and not reaped yet, in this process (spawns still completing included). */
  livePids(): number[];
}

const sweepDelayMs = 200; // after a script exits, before looking for its orphans
const orphanGraceMs = 2000; // between SIGTERM and SIGKILL for an orphan

/** Pids of the children Node's child_process started and has not reaped yet. */
const nodeChildren = new Set<number>();
let tracking = false;

/**
 * Records every child that child_process starts from now on (cluster workers, FastCGI apps, peers).
 * Patching the prototype is the one place every async spawn passes; spawnSync reaps its child
 * before it returns, so a sweep never sees one.
 */
function trackNodeChildren(): void {
  if (tracking) return;
  tracking = true;
  const proto = ChildProcess.prototype as unknown as { spawn: (this: ChildProcess, ...args: unknown[]) => unknown };
  const spawn = proto.spawn;
  proto.spawn = function (this: ChildProcess, ...args: unknown[]) {
    const result = spawn.apply(this, args);
    const pid = this.pid;
    if (pid !== undefined) {
      nodeChildren.add(pid);
      this.once('exit', () => nodeChildren.delete(pid));
    }
    return result;
  };
}

/** When the process started, in clock ticks since boot (field 22 of /proc/PID/stat), or undefined. */
function startTime(pid: number): number | undefined {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'latin1');
    const value = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19]);
    return Number.isFinite(value) ? value : undefined;
  } catch {
    return undefined;
  }
}

function signal(pid: number, name: NodeJS.Signals): boolean {
  try {
    process.kill(pid, name);
    return true;
  } catch {
    return false;
  }
}

/**
 * The process's one sweep: the subreaper role and the children it adopts belong to the process, so
 * every spawner in it shares this (acquire(), release()).
 */
export class OrphanReaper {
  private static shared: OrphanReaper | undefined;
  /**
   * Whether the process was a subreaper before a reaper of ours made it one (someone else's choice,
   * kept when the last spawner goes); undefined while none of ours is in force. Static: a reaper
   * may start while the one before it is still closing.
   */
  private static subreaperBefore: boolean | undefined;
  private users = 0;

  /** The process's reaper, started by its first user. */
  static acquire(calls: ReaperCalls): OrphanReaper {
    const reaper = (OrphanReaper.shared ??= new OrphanReaper(calls));
    reaper.users++;
    return reaper;
  }

  /** A spawner is done with it: the last one ends the orphans left. */
  async release(): Promise<void> {
    if (--this.users > 0) return;
    if (OrphanReaper.shared === this) OrphanReaper.shared = undefined;
    await this.close();
  }

  /** Children that existed before adoption began: never ours to end. */
  private readonly earlier: Set<number>;
  private readonly termedAt = new Map<number, number>();
  private timer: NodeJS.Timeout | undefined;
  private sweepAt = Infinity;

  private constructor(private readonly calls: ReaperCalls) {
    trackNodeChildren();
    const was = calls.setSubreaper(true);
    OrphanReaper.subreaperBefore ??= was;
    this.earlier = new Set(calls.otherChildren());
  }

  /** A script exited: look for what it left behind a moment later. */
  scriptExited(): void {
    this.schedule(sweepDelayMs);
  }

  private schedule(delayMs: number): void {
    const at = Date.now() + delayMs;
    if (this.timer && this.sweepAt <= at) return;
    clearTimeout(this.timer);
    this.sweepAt = at;
    this.timer = setTimeout(() => this.sweep(), delayMs);
    // Orphans alone do not keep the runner alive; close() ends them.
    this.timer.unref();
  }

  /** The adopted children: not scripts, not Node's, not there before. Zombies among them are reaped here. */
  private adopted(): number[] {
    const children = this.calls.otherChildren();
    const present = new Set(children);
    for (const pid of this.earlier) if (!present.has(pid)) this.earlier.delete(pid);
    const adopted: number[] = [];
    for (const pid of children) {
      if (nodeChildren.has(pid) || this.earlier.has(pid)) continue;
      if (this.calls.reap(pid)) {
        this.termedAt.delete(pid); // it had exited: reaped, nothing left to end
        continue;
      }
      adopted.push(pid);
    }
    for (const pid of this.termedAt.keys()) if (!present.has(pid)) this.termedAt.delete(pid);
    return adopted;
  }

  /**
   * The adopted children no running script can have started: those older than the oldest running
   * script (a tick's tie spared). A script still running may have started an orphan it will wait for.
   */
  private unclaimed(adopted: number[]): number[] {
    let oldestRunning = Infinity;
    for (const pid of this.calls.livePids()) oldestRunning = Math.min(oldestRunning, startTime(pid) ?? Infinity);
    return adopted.filter((pid) => {
      const started = startTime(pid);
      return started !== undefined && started < oldestRunning;
    });
  }

  private sweep(): void {
    this.timer = undefined;
    this.sweepAt = Infinity;
    const adopted = this.adopted();
    if (adopted.length === 0) return;
    const now = Date.now();
    for (const pid of adopted) {
      const termed = this.termedAt.get(pid);
      if (termed !== undefined && now - termed >= orphanGraceMs) signal(pid, 'SIGKILL');
    }
    for (const pid of this.unclaimed(adopted.filter((pid) => !this.termedAt.has(pid)))) {
      if (signal(pid, 'SIGTERM')) this.termedAt.set(pid, now);
    }
    // Orphans remain (waiting for their SIGKILL, their exit to be reaped, or spared for now): look again.
    this.schedule(sweepDelayMs);
  }

  /**
   * The last spawner is stopping: TERM the adopted orphans, KILL those still there after the grace
   * period, and reap them. Then the process stops adopting: with no sweep left, what it adopted
   * later would stay its zombies.
   */
  private async close(): Promise<void> {
    clearTimeout(this.timer);
    this.timer = undefined;
    const pending = (pids: number[]) => {
      const adopted = new Set(this.adopted());
      return pids.filter((pid) => adopted.has(pid));
    };
    let orphans = this.unclaimed(this.adopted());
    for (const pid of orphans) signal(pid, 'SIGTERM');
    const deadline = Date.now() + orphanGraceMs;
    while (orphans.length > 0 && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 20));
      orphans = pending(orphans);
    }
    for (const pid of orphans) signal(pid, 'SIGKILL');
    while (orphans.length > 0 && Date.now() < deadline + orphanGraceMs) {
      await new Promise((resolve) => setTimeout(resolve, 20));
      orphans = pending(orphans);
    }
    // Unless another spawner has started a reaper meanwhile.
    if (OrphanReaper.shared === undefined && OrphanReaper.subreaperBefore !== undefined) {
      if (!OrphanReaper.subreaperBefore) this.calls.setSubreaper(false);
      OrphanReaper.subreaperBefore = undefined;
    }
  }
}
