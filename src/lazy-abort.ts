// An abort signal that exists only once somebody asks for it: most requests are never aborted, and few apps look.
//
// Creating an AbortController costs several microseconds in Node 20 (it is a transferable object),
// which is a noticeable share of a whole small request. Code of ours that only needs to hear of an
// abort takes an AbortWatch, which an AbortSignal is and a LazyAbort is without building one.

/** What the CGI host and the FastCGI client need of an abort signal. */
export interface AbortWatch {
  readonly aborted: boolean;
  addEventListener(type: 'abort', listener: () => void, options?: { once?: boolean }): void;
  removeEventListener(type: 'abort', listener: () => void): void;
}

export class LazyAbort implements AbortWatch {
  private controller: AbortController | null = null;
  private reason: unknown = undefined;
  /** Listeners added here rather than on a signal; each hears one abort (all ours are `once`). */
  private listeners: Array<() => void> | null = null;
  aborted = false;

  get signal(): AbortSignal {
    if (!this.controller) {
      this.controller = new AbortController();
      if (this.aborted) this.controller.abort(this.reason);
    }
    return this.controller.signal;
  }

  addEventListener(_type: 'abort', listener: () => void): void {
    if (!this.aborted) (this.listeners ??= []).push(listener);
  }

  removeEventListener(_type: 'abort', listener: () => void): void {
    const i = this.listeners?.indexOf(listener) ?? -1;
    if (i !== -1) this.listeners!.splice(i, 1);
  }

  abort(reason?: unknown): void {
    if (this.aborted) return;
    this.aborted = true;
    this.reason = reason;
    const listeners = this.listeners;
    this.listeners = null;
    if (listeners) for (const listener of listeners) listener();
    this.controller?.abort(reason);
  }
}
