<?php
// The php-fpm peer of fcgi/hello.ts: the same body and content type.
header('Content-Type: text/plain; charset=utf-8');
echo "hello\n";
