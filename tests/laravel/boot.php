<?php

/*
 * A minimal Laravel for the tests: the container, Redis (phpredis) with the test's prefix,
 * the queue capsule with a redis connection named LARAVEL_CONNECTION, the database capsule and
 * Laravel's DatabaseUuidFailedJobProvider. No application: only the pieces that write and read
 * the queues and failed_jobs, so the tests exercise Laravel's own code for both.
 *
 * Settings come from the environment, with Laravel's .env names.
 */

require_once 'Illuminate/autoload.php';

// The test job classes (App\Jobs\...) live in the app template next to this file.
spl_autoload_register(function (string $class): void {
    if (str_starts_with($class, 'App\\')) {
        $file = __DIR__.'/app/app/'.str_replace('\\', '/', substr($class, 4)).'.php';
        if (is_file($file)) {
            require $file;
        }
    }
});

use Illuminate\Container\Container;
use Illuminate\Database\Capsule\Manager as Database;
use Illuminate\Events\Dispatcher;
use Illuminate\Queue\Capsule\Manager as Queue;
use Illuminate\Queue\Failed\DatabaseUuidFailedJobProvider;
use Illuminate\Redis\RedisManager;

function env_or(string $name, ?string $default = null): ?string
{
    $value = getenv($name);

    return $value === false ? $default : $value;
}

date_default_timezone_set(env_or('APP_TIMEZONE', 'UTC'));

$container = new Container;
Container::setInstance($container);
$container->instance('events', new Dispatcher($container));

$container->instance('redis', new RedisManager($container, 'phpredis', [
    'options' => ['prefix' => env_or('REDIS_PREFIX', 'laravel_database_')],
    'default' => [
        'host' => env_or('REDIS_HOST', '127.0.0.1'),
        'port' => (int) env_or('REDIS_PORT', '6379'),
        'database' => (int) env_or('REDIS_DB', '0'),
    ],
]));

$connection = env_or('LARAVEL_CONNECTION', 'redis');
$queue = new Queue($container);
$queue->addConnection([
    'driver' => 'redis',
    'connection' => 'default',
    'queue' => 'default',
    'retry_after' => 90,
    'block_for' => null,
], $connection);
$container['config']['queue.default'] = $connection;
$queue->setAsGlobal();

$database = new Database($container);
$database->addConnection([
    'driver' => 'mysql',
    'host' => env_or('DB_HOST', '127.0.0.1'),
    'port' => (int) env_or('DB_PORT', '3306'),
    'database' => env_or('DB_DATABASE', 'laravel'),
    'username' => env_or('DB_USERNAME', 'root'),
    'password' => env_or('DB_PASSWORD', ''),
    'charset' => 'utf8mb4',
    'collation' => 'utf8mb4_unicode_ci',
]);
$database->setAsGlobal();

$failer = new DatabaseUuidFailedJobProvider($database->getDatabaseManager(), 'default', 'failed_jobs');
$container->instance('queue.failer', $failer);
$container->instance('queue', $queue->getQueueManager());

return [$container, $queue, $failer, $connection];
