#!/bin/sh
# The smallest CGI script: the cost of starting a process is all there is. printf is a shell builtin.
printf 'Content-Type: text/plain; charset=utf-8\r\n\r\nhello\n'
