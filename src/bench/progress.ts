// The live progress line: rewritten in place on a terminal, one plain line per finished step otherwise (logs, CI).

export interface ProgressState {
  target: string;
  connections: number;
  round: number;
  rounds: number;
  phase: 'warm-up' | 'measure' | 'drain';
  /** Seconds into this step and its planned length. */
  stepSeconds: number;
  stepTotalSeconds: number;
  /** Seconds since the benchmark started and the estimated total. */
  elapsedSeconds: number;
  totalSeconds: number;
  /** Answers per second in this step so far. */
  rate: number;
  errors: number;
}

export function formatClock(seconds: number): string {
  const s = Math.max(0, Math.round(seconds));
  const m = Math.floor(s / 60);
  return m ? `${m}m${String(s % 60).padStart(2, '0')}s` : `${s}s`;
}

export function formatProgress(p: ProgressState): string {
  const rate = p.rate >= 100 ? Math.round(p.rate).toString() : p.rate.toFixed(1);
  return (
    `${p.target} c=${p.connections} round ${p.round}/${p.rounds} ${p.phase} ` +
    `${p.stepSeconds.toFixed(1)}/${p.stepTotalSeconds.toFixed(1)}s  ` +
    `total ${formatClock(p.elapsedSeconds)}/${formatClock(p.totalSeconds)}  ${rate} req/s` +
    (p.errors ? `  ${p.errors} errors` : '')
  );
}

export class Progress {
  private readonly tty: boolean;
  private shown = false;

  constructor(private readonly stream: NodeJS.WriteStream = process.stderr) {
    this.tty = Boolean(stream.isTTY);
  }

  /** Redraws the line on a terminal; does nothing elsewhere (a log would fill with partial states). */
  update(state: ProgressState): void {
    if (!this.tty) return;
    const width = (this.stream.columns || 120) - 1;
    this.stream.write(`\r\x1b[2K${formatProgress(state).slice(0, width)}`);
    this.shown = true;
  }

  /** A line that stays: on a terminal it replaces the live line, elsewhere it is simply printed. */
  log(line: string): void {
    this.clear();
    this.stream.write(line + '\n');
  }

  clear(): void {
    if (this.tty && this.shown) this.stream.write('\r\x1b[2K');
    this.shown = false;
  }
}
