<?php

/*
 * The smallest Laravel application the PHP runner can boot: Debian's framework, the console
 * kernel, the default exception handler, and the test job classes under app/.
 */

require_once 'Illuminate/autoload.php';
// Laravel's HTTP client needs Guzzle (Debian's php-guzzlehttp-guzzle; an app has it from Composer).
require_once 'GuzzleHttp/autoload.php';

spl_autoload_register(function (string $class): void {
    if (str_starts_with($class, 'App\\')) {
        $file = dirname(__DIR__).'/app/'.str_replace('\\', '/', substr($class, 4)).'.php';
        if (is_file($file)) {
            require $file;
        }
    }
});

$app = new Illuminate\Foundation\Application(dirname(__DIR__));

$app->singleton(
    Illuminate\Contracts\Console\Kernel::class,
    Illuminate\Foundation\Console\Kernel::class
);

$app->singleton(
    Illuminate\Contracts\Debug\ExceptionHandler::class,
    Illuminate\Foundation\Exceptions\Handler::class
);

return $app;
