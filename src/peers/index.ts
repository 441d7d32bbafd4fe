// The launchers for real peer servers (nginx, Apache, php-fpm, fcgiwrap, spawn-fcgi, cgi-fcgi) used by integration tests and benchmarks.
export * from './ports.ts';
export * from './process.ts';
export * from './tempdir.ts';
export * from './availability.ts';
export * from './nginx.ts';
export * from './apache.ts';
export * from './php-fpm.ts';
export * from './fcgiwrap.ts';
export * from './spawn-fcgi.ts';
export * from './cgi-fcgi.ts';
