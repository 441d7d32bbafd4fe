#!/usr/bin/env -S node --max-semi-space-size=32
// The package bin: registers tsx so the TypeScript sources run without a build step, then starts the CLI.
// The shebang gives node the flags `npm start` gives it (src/node-flags.ts; `env -S` splits them).
import { register } from 'tsx/esm/api';

register();
await import('../src/cli.ts');
