#!/usr/bin/env node
// The same answer as fcgi/hello.ts from plain Node, without TypeScript: the cost of starting Node.
process.stdout.write('Content-Type: text/plain; charset=utf-8\r\n\r\nhello\n');
