// Runs a Responder on a listening socket in this process, with graceful stop on SIGTERM/SIGQUIT.
import cluster from 'node:cluster';
import net from 'node:net';
import { logError, logInfo } from '../log.ts';
import { describeTarget, listenOn, type ListenTarget } from '../listen.ts';
import type { Responder } from './responder.ts';

export interface ResponderServer {
  server: net.Server;
  /** Stops accepting, lets in-flight requests finish up to the deadline, then resolves. */
  stop(deadlineMs: number): Promise<void>;
}

export async function startResponderServer(responder: Responder, target: ListenTarget, socketMode: number): Promise<ResponderServer> {
  // No allowHalfOpen: a FIN from the web server means it went away. nginx closes the upstream
  // connection when its client aborts (it never sends FCGI_ABORT_REQUEST), and that close must abort
  // the app's request; no web server half-closes a FastCGI connection and still waits for the answer.
  const server = net.createServer({ noDelay: true }, (socket) => responder.handleConnection(socket));
  server.on('error', (err) => logError(`fastcgi: listener error: ${err.message}`));
  await listenOn(server, target, socketMode);
  let stopping: Promise<void> | null = null;
  return {
    server,
    stop(deadlineMs) {
      stopping ??= (async () => {
        server.close();
        await responder.shutdown(deadlineMs);
      })();
      return stopping;
    },
  };
}

/**
 * SIGTERM and SIGQUIT (php-fpm's graceful stop) finish in-flight work, then exit 0; a second signal
 * exits at once, and so does SIGINT. A cluster worker is told by its primary instead: it ignores
 * SIGINT (a terminal's Ctrl-C reaches the whole process group, and the primary decides) and a
 * repeated signal (a worker retiring on SIGHUP gets another SIGTERM if the primary then stops;
 * the primary's own deadline ends a worker that hangs).
 */
export function stopOnSignals(stop: () => Promise<void>, what: string): void {
  const worker = cluster.isWorker;
  let stopping = false;
  const onSignal = (signal: NodeJS.Signals) => {
    if (stopping) {
      if (worker) return;
      logInfo(`${what}: ${signal} again, exiting now`);
      process.exit(0);
    }
    stopping = true;
    logInfo(`${what}: ${signal} received, finishing in-flight requests`);
    stop().then(
      () => process.exit(0),
      (err) => {
        logError(`${what}: error while stopping: ${(err as Error).message}`);
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGQUIT', onSignal);
  process.on('SIGINT', worker ? () => {} : onSignal);
}

export { describeTarget };
