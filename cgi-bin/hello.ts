#!/usr/bin/env -S node --import tsx
// fcgi/hello.ts run as a CGI script through the child adapter: the same handler, a process per request.
// (tsx is found from the script's directory, which is the working directory of every CGI script.)
import { runCgi } from '../src/cgi/child.ts';
import app from '../fcgi/hello.ts';

await runCgi(app);
