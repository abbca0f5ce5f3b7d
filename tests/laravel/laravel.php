<?php

/*
 * What the Python tests ask of Laravel, done with Laravel's own code (see boot.php):
 *
 *   php laravel.php push NAME DATA_JSON QUEUE          Queue::push('name', $data, $queue)
 *   php laravel.php later SECONDS NAME DATA_JSON QUEUE Queue::later(...)
 *   php laravel.php pushRaw PAYLOAD QUEUE              Queue::pushRaw($payload, $queue)
 *   php laravel.php dispatch CLASS ARGS_JSON QUEUE     Queue::push(new CLASS(...ARGS), '', $queue)
 *   php laravel.php failed all | find ID               the failed-job provider, as JSON
 *   php laravel.php artisan COMMAND [ARGS...]          queue:failed, queue:retry, queue:forget,
 *                                                      queue:flush as `php artisan` runs them
 *
 * Pushes print the job's id; artisan prints the command's output and exits with its status.
 */

[$container, $queue, $failer, $connection] = require __DIR__.'/boot.php';

use Illuminate\Console\Application as Artisan;
use Illuminate\Queue\Console\FlushFailedCommand;
use Illuminate\Queue\Console\ForgetFailedCommand;
use Illuminate\Queue\Console\ListFailedCommand;
use Illuminate\Queue\Console\RetryCommand;

$args = array_slice($argv, 1);
$command = array_shift($args);
$json = fn (string $text) => json_decode($text, true, 512, JSON_THROW_ON_ERROR);

switch ($command) {
    case 'push':
        [$name, $data, $on] = $args;
        echo $queue->connection($connection)->push($name, $json($data), $on), "\n";
        break;
    case 'later':
        [$delay, $name, $data, $on] = $args;
        echo $queue->connection($connection)->later((int) $delay, $name, $json($data), $on), "\n";
        break;
    case 'pushRaw':
        [$payload, $on] = $args;
        echo $queue->connection($connection)->pushRaw($payload, $on), "\n";
        break;
    case 'dispatch':
        [$class, $arguments, $on] = $args;
        echo $queue->connection($connection)->push(new $class(...$json($arguments)), '', $on), "\n";
        break;
    case 'failed':
        $records = $args[0] === 'all' ? $failer->all() : $failer->find($args[1]);
        echo json_encode($records, JSON_UNESCAPED_SLASHES | JSON_UNESCAPED_UNICODE), "\n";
        break;
    case 'artisan':
        $artisan = new Artisan($container, $container['events'], 'test');
        $artisan->setAutoExit(false);
        foreach ([ListFailedCommand::class, RetryCommand::class, ForgetFailedCommand::class, FlushFailedCommand::class] as $class) {
            $artisan->add(tap(new $class, fn ($c) => $c->setLaravel($container)));
        }
        $status = $artisan->call(array_shift($args), parse_artisan_args($args));
        echo $artisan->output();
        exit($status);
    default:
        fwrite(STDERR, "unknown command: {$command}\n");
        exit(2);
}

/** `ID ID --queue=q` as Artisan::call parameters: positional ids under `id`. */
function parse_artisan_args(array $args): array
{
    $parameters = [];
    foreach ($args as $arg) {
        if (str_starts_with($arg, '--')) {
            [$name, $value] = array_pad(explode('=', $arg, 2), 2, true);
            $parameters[$name] = $value;
        } else {
            $parameters['id'][] = $arg;
        }
    }

    return $parameters;
}
