// The Node flags `serve` runs with (package.json's start script, the package bin's shebang and the benchmarks that start it say the same; tests keep them in step).
//
// --max-semi-space-size=32: V8's young generation may grow to 2 × 32 MiB instead of 2 × 16 MiB.
// Every request allocates short-lived objects; a larger young generation is collected half as
// often, and a scavenge costs what survives, not what died. Measured on `serve` answering
// cgi-bin/hello.sh at 16 connections: the process's CPU per request fell by about 10% and
// requests/s rose by 8 to 12%, for about 30 MB more RSS under load. It cannot be set at run time
// (V8 sizes the heap when the isolate starts), so it is a command-line flag.
export const serveNodeFlags: readonly string[] = ['--max-semi-space-size=32'];
