// LazyAbort: listeners hear one abort without an AbortSignal being built, and a signal asked for late still carries the abort.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { LazyAbort } from '../src/lazy-abort.ts';

test('listeners hear the abort once; a removed one does not; none hear it after the fact', () => {
  const abort = new LazyAbort();
  const heard: string[] = [];
  const first = () => heard.push('first');
  const removed = () => heard.push('removed');
  abort.addEventListener('abort', first);
  abort.addEventListener('abort', removed);
  abort.removeEventListener('abort', removed);
  assert.equal(abort.aborted, false);
  abort.abort(new Error('gone'));
  abort.abort(new Error('again'));
  assert.equal(abort.aborted, true);
  assert.deepEqual(heard, ['first']);
  abort.addEventListener('abort', () => heard.push('late'));
  assert.deepEqual(heard, ['first'], 'like an AbortSignal, a listener added after the abort is not called');
});

test('a signal asked for before the abort follows it; one asked for after is already aborted, with the reason', () => {
  const early = new LazyAbort();
  const signal = early.signal;
  let heard = 0;
  signal.addEventListener('abort', () => heard++);
  early.abort(new Error('client went away'));
  assert.equal(signal.aborted, true);
  assert.equal(heard, 1);
  assert.equal((signal.reason as Error).message, 'client went away');

  const late = new LazyAbort();
  late.abort(new Error('timed out'));
  assert.equal(late.signal.aborted, true);
  assert.equal((late.signal.reason as Error).message, 'timed out');
});

test('both kinds of listener hear one abort', () => {
  const abort = new LazyAbort();
  const heard: string[] = [];
  abort.addEventListener('abort', () => heard.push('watch'));
  abort.signal.addEventListener('abort', () => heard.push('signal'));
  abort.abort(undefined);
  assert.deepEqual(heard.sort(), ['signal', 'watch']);
});
