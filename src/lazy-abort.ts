// An abort signal that exists only once somebody asks for it: most requests are never aborted, and few apps look.
//
// Creating an AbortController costs several microseconds in Node 20 (it is a transferable object),
// which is a noticeable share of a whole small FastCGI request.
export class LazyAbort {
  private controller: AbortController | null = null;
  private reason: unknown = undefined;
  aborted = false;

  get signal(): AbortSignal {
    if (!this.controller) {
      this.controller = new AbortController();
      if (this.aborted) this.controller.abort(this.reason);
    }
    return this.controller.signal;
  }

  abort(reason: unknown): void {
    if (this.aborted) return;
    this.aborted = true;
    this.reason = reason;
    this.controller?.abort(reason);
  }
}
