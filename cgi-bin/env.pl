#!/usr/bin/perl
# Prints what a CGI script is given: its environment (sorted), its arguments and its working directory.
use strict;
use warnings;
use Cwd ();

print "Content-Type: text/plain; charset=utf-8\r\n\r\n";
print "$_=$ENV{$_}\n" for sort keys %ENV;
print "\nargv: ", join(' ', map { "[$_]" } @ARGV), "\n";
print "cwd: ", Cwd::getcwd(), "\n";
