// The request body of one FastCGI request: STDIN records queued until the app reads them, as a ReadableStream.

/**
 * STDIN content arrives whether or not the app reads the body, so chunks wait in a queue; the
 * ReadableStream is built only when the app touches `request.body`. `onPressure(true)` asks the
 * connection to stop reading the socket once more than `highWaterMark` bytes wait, and
 * `onPressure(false)` lets it go on, so a slow reader bounds memory instead of buffering a whole upload.
 */
export class StdinBody {
  private queue: Uint8Array[] = [];
  private queuedBytes = 0;
  private ended = false;
  private failure: Error | null = null;
  private controller: ReadableStreamDefaultController<Uint8Array> | null = null;
  private stream: ReadableStream<Uint8Array> | null = null;
  private pressured = false;
  /** A read is waiting on the stream: the next chunk goes straight to it. */
  private wanted = false;
  private discarded = false;
  /** Total STDIN bytes received, for the log and for CONTENT_LENGTH checks. */
  received = 0;
  private completeWaiters: Array<() => void> = [];

  constructor(
    private readonly highWaterMark: number,
    private readonly onPressure: (paused: boolean) => void,
  ) {}

  push(chunk: Uint8Array): void {
    this.received += chunk.byteLength;
    if (this.discarded || this.ended) return;
    this.queue.push(chunk);
    this.queuedBytes += chunk.byteLength;
    this.deliver();
    if (!this.pressured && this.queuedBytes > this.highWaterMark) {
      this.pressured = true;
      this.onPressure(true);
    }
  }

  end(): void {
    if (this.ended) return;
    this.ended = true;
    this.deliver();
    this.settle();
  }

  /** All of STDIN has come (or it never will: failed, or discarded). */
  get complete(): boolean {
    return this.ended || this.discarded;
  }

  /** Resolves once `complete`. */
  whenComplete(): Promise<void> {
    if (this.complete) return Promise.resolve();
    return new Promise((resolve) => this.completeWaiters.push(resolve));
  }

  private settle(): void {
    const waiters = this.completeWaiters;
    this.completeWaiters = [];
    for (const resolve of waiters) resolve();
  }

  /** The web server aborted or the connection died: a reader sees an error rather than a short body. */
  fail(error: Error): void {
    if (this.ended || this.discarded) return;
    this.failure = error;
    this.ended = true;
    this.queue = [];
    this.queuedBytes = 0;
    if (this.controller) {
      try {
        this.controller.error(error);
      } catch {
        // already closed
      }
    }
    this.release();
    this.settle();
  }

  /** The request is over: drop anything still queued and stop holding the socket back. */
  discard(): void {
    this.discarded = true;
    this.queue = [];
    this.queuedBytes = 0;
    this.release();
    this.settle();
  }

  get hasStream(): boolean {
    return this.stream !== null;
  }

  toStream(): ReadableStream<Uint8Array> {
    if (this.stream) return this.stream;
    this.stream = new ReadableStream<Uint8Array>(
      {
        start: (controller) => {
          this.controller = controller;
          if (this.failure) controller.error(this.failure);
        },
        pull: () => {
          this.wanted = true;
          this.deliver();
        },
        cancel: () => {
          this.discard();
        },
      },
      // highWaterMark 0: the stream asks (pull) only when a read is waiting, so the queue here is
      // the only buffer and its size is what backpressure measures.
      { highWaterMark: 0, size: (chunk) => chunk.byteLength },
    );
    return this.stream;
  }

  private deliver(): void {
    const controller = this.controller;
    if (!controller || this.failure || !this.wanted) return;
    if (this.queue.length > 0) {
      this.wanted = false;
      for (const chunk of this.queue) controller.enqueue(chunk);
      this.queue = [];
      this.queuedBytes = 0;
    }
    if (this.queue.length === 0 && this.ended) {
      try {
        controller.close();
      } catch {
        // already closed or errored
      }
      this.controller = null;
    }
    if (this.pressured && this.queuedBytes <= this.highWaterMark / 2) this.release();
  }

  private release(): void {
    if (this.pressured) {
      this.pressured = false;
      this.onPressure(false);
    }
  }
}
