// The node:cluster primary: starts N workers, restarts crashed ones with backoff, replaces them one by one on SIGHUP, stops them on SIGTERM.
import cluster, { type Worker } from 'node:cluster';
import os from 'node:os';
import { intFlag } from './command.ts';
import { logError, logInfo } from './log.ts';

export interface PrimaryOptions {
  workers: number;
  describe: string;
  shutdownMs: number;
}

/** `--workers N`, or `auto` for one per core (as nginx's `worker_processes auto`). */
export function workerCount(value: string): number {
  return value === 'auto' ? os.availableParallelism() : intFlag({ workers: value }, 'workers', 1);
}

/**
 * The workers re-run the same command line (cluster forks process.argv), and share the listening
 * socket through the primary. The primary holds no app code, so it cannot crash with the app.
 */
export function runPrimary(options: PrimaryOptions): Promise<number> {
  // Each worker accepts on the shared socket itself. With Node's default round-robin, the primary
  // accepts and hands each connection to a worker; a worker killed (SIGKILL, OOM) while a hand-off
  // is in flight leaves that connection open in the primary with nobody to serve or close it, and
  // the web server waits for its read timeout. Unless the operator chose otherwise.
  if (!process.env.NODE_CLUSTER_SCHED_POLICY) cluster.schedulingPolicy = cluster.SCHED_NONE;
  let stopping = false;
  let restartDelay = 100;
  const retiring = new Set<Worker>();
  const fork = () => cluster.fork();
  for (let i = 0; i < options.workers; i++) fork();
  let listening = 0;
  cluster.on('listening', () => {
    listening++;
    if (listening === options.workers) logInfo(`fcgi: ${options.workers} workers serving ${options.describe} (primary pid ${process.pid})`);
  });
  cluster.on('exit', (worker, code, signal) => {
    if (retiring.delete(worker) || stopping) return;
    logError(`fcgi: worker ${worker.process.pid} exited (${signal ?? `code ${code}`}); restarting in ${restartDelay} ms`);
    const delay = restartDelay;
    restartDelay = Math.min(restartDelay * 2, 10_000);
    setTimeout(() => {
      if (!stopping) fork().once('listening', () => (restartDelay = 100));
    }, delay);
  });

  // SIGHUP: replace each worker in turn, starting its successor first, so that capacity never drops to zero.
  let reloading = false;
  process.on('SIGHUP', async () => {
    if (reloading || stopping) return;
    reloading = true;
    logInfo('fcgi: SIGHUP received, replacing workers one at a time');
    for (const old of Object.values(cluster.workers ?? {})) {
      if (!old || stopping) continue;
      await new Promise<void>((resolve) => {
        const next = fork();
        next.once('listening', () => resolve());
        next.once('exit', () => resolve());
      });
      retiring.add(old);
      old.process.kill('SIGTERM');
    }
    reloading = false;
    logInfo('fcgi: reload done');
  });

  return new Promise<number>((resolve) => {
    const stop = (signal: NodeJS.Signals) => {
      if (stopping) return;
      stopping = true;
      logInfo(`fcgi: ${signal} received, stopping workers`);
      const workers = Object.values(cluster.workers ?? {}).filter((w): w is Worker => !!w);
      if (workers.length === 0) return resolve(0);
      let left = workers.length;
      for (const worker of workers) {
        worker.once('exit', () => {
          if (--left === 0) resolve(0);
        });
        worker.process.kill('SIGTERM');
      }
      // Workers enforce their own deadline; this one only guards against a worker that hangs.
      setTimeout(() => {
        for (const worker of workers) worker.process.kill('SIGKILL');
        resolve(0);
      }, options.shutdownMs + 5000).unref();
    };
    process.on('SIGTERM', stop);
    process.on('SIGQUIT', stop);
    process.on('SIGINT', stop);
  });
}
