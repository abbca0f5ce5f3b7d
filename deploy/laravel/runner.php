<?php

/*
 * A warm PHP worker for the whatsapp-gateway worker pool (python -m workers).
 *
 * The pool keeps a few of these processes running. Each one boots the Laravel application
 * once (bootstrap/app.php and its console kernel, as `php artisan` does), then runs one job at
 * a time with Laravel's own Worker::process(): JobProcessing/JobProcessed events, tries,
 * backoff, maxExceptions, the job's failed() hook and JobFailed. It never touches the queue:
 * the pool took the job from Redis and settles it there from the answer.
 *
 * The application: LARAVEL_APP_PATH, else the folder of the .env named by LARAVEL_ENV_FILE.
 *
 * Requests come on stdin: one line of JSON, then exactly `length` bytes, the job's payload as
 * it was popped from the queue (Laravel's RedisJob::getRawBody()).
 *   {"op": "fire", "queue": "q", "length": N, "tries": 3, "backoff": "10,60,300"}
 *   {"op": "fail", "queue": "q", "length": N, "message": "..."}    run the failed() hook only
 * Answers go to the file descriptor given by --answers (default 3), one line of JSON each, so
 * whatever a job prints on stdout cannot be mistaken for one:
 *   {"status": "ready", "laravel": "8.83.26"}              once, after the application booted
 *   {"status": "done"}
 *   {"status": "released", "delay": 30, "exception": null} (or the exception that caused it)
 *   {"status": "failed", "exception": "..."}               (string) of the exception, as
 *                                                          failed_jobs keeps it
 * Every answer to a job carries "last": true when the runner exits right after it: when the
 * job lost the database connection (as `queue:work` exits then), or left the runner above
 * --memory MB (default 128). The pool starts a fresh runner. --connection=redis is the queue
 * connection name jobs and events see.
 */

$options = getopt('', ['answers:', 'connection:', 'memory:']);
$connection = $options['connection'] ?? 'redis';
$memoryLimit = (int) ($options['memory'] ?? 128);
$answers = fopen('php://fd/'.(int) ($options['answers'] ?? 3), 'w');
if ($answers === false) {
    fwrite(STDERR, "runner: cannot open the answers descriptor\n");
    exit(2);
}

$envFile = getenv('LARAVEL_ENV_FILE') ?: '';
$appPath = getenv('LARAVEL_APP_PATH') ?: ($envFile !== '' ? dirname($envFile) : '');
if ($appPath === '' || ! is_file($appPath.'/bootstrap/app.php')) {
    fwrite(STDERR, "runner: no Laravel application: set LARAVEL_APP_PATH to a folder with bootstrap/app.php\n");
    exit(2);
}

$app = require $appPath.'/bootstrap/app.php';
if ($envFile !== '' && realpath(dirname($envFile)) === realpath($appPath)) {
    $app->loadEnvironmentFrom(basename($envFile));
}
$app->make(Illuminate\Contracts\Console\Kernel::class)->bootstrap();

/** The job the pool handed over: Laravel's Job with the outcome kept instead of acted on. */
final class GatewayJob extends Illuminate\Queue\Jobs\Job implements Illuminate\Contracts\Queue\Job
{
    public ?int $delay = null;

    public ?Throwable $failure = null;

    private array $decoded;

    public function __construct($container, private string $raw, $connectionName, $queue)
    {
        $this->container = $container;
        $this->connectionName = $connectionName;
        $this->queue = $queue;
        $this->decoded = json_decode($raw, true) ?? [];
    }

    public function getJobId()
    {
        return $this->decoded['id'] ?? null;
    }

    public function getRawBody()
    {
        return $this->raw;
    }

    /** As RedisJob: the attempt being run, the popped payload's count plus one. */
    public function attempts()
    {
        return ($this->decoded['attempts'] ?? 0) + 1;
    }

    public function release($delay = 0)
    {
        parent::release($delay);
        $this->delay = $this->secondsUntil($delay);
    }

    public function fail($e = null)
    {
        $this->failure = $e ?: new Illuminate\Queue\ManuallyFailedException;
        parent::fail($e);
    }

    public function answer(?Throwable $error): array
    {
        if ($this->hasFailed()) {
            return ['status' => 'failed', 'exception' => (string) $this->failure];
        }
        if ($this->isReleased()) {
            return ['status' => 'released', 'delay' => $this->delay, 'exception' => $error ? (string) $error : null];
        }

        return ['status' => 'done'];
    }
}

/** Laravel's own test for "the database went away", which makes `queue:work` exit. */
$lostConnection = new class
{
    use Illuminate\Database\DetectsLostConnections;

    public function __invoke(Throwable $e): bool
    {
        return $this->causedByLostConnection($e);
    }
};

/**
 * Laravel's HTTP client, with an Idempotency-Key on each request of a job that acts (not GET
 * or HEAD): "<job key>:<n>", n counting from 1 in each attempt, so every attempt sends the same
 * keys and the gateway sends each request at most once. A key the job set itself is kept.
 */
final class KeyedHttpFactory extends Illuminate\Http\Client\Factory
{
    private int $sent = 0;

    public function __construct($dispatcher, private string $key)
    {
        parent::__construct($dispatcher);
    }

    protected function newPendingRequest()
    {
        return parent::newPendingRequest()->withMiddleware(function (callable $handler) {
            return function ($request, array $options) use ($handler) {
                $acts = ! in_array(strtoupper($request->getMethod()), ['GET', 'HEAD', 'OPTIONS'], true);
                if ($acts && $this->key !== '') {
                    $key = $this->key.':'.(++$this->sent);
                    if (! $request->hasHeader('Idempotency-Key')) {
                        $request = $request->withHeader('Idempotency-Key', $key);
                    }
                }

                return $handler($request, $options);
            };
        });
    }
}

$worker = $app->make('queue.worker');
if ($app->bound('cache')) {
    try {
        $worker->setCache($app['cache']->driver());  // for maxExceptions
    } catch (Throwable $e) {
        // no usable cache store: maxExceptions is not counted, as in queue:work without one
    }
}
$exceptions = $app->make(Illuminate\Contracts\Debug\ExceptionHandler::class);

$send = function (array $answer) use ($answers): void {
    fwrite($answers, json_encode($answer, JSON_UNESCAPED_SLASHES | JSON_INVALID_UTF8_SUBSTITUTE)."\n");
    fflush($answers);
};
$send(['status' => 'ready', 'laravel' => $app->version()]);

while (($line = fgets(STDIN)) !== false) {
    $request = json_decode($line, true);
    $length = is_array($request) ? ($request['length'] ?? null) : null;
    if (! is_int($length) || $length < 0) {
        fwrite(STDERR, "runner: bad request header\n");
        exit(2);
    }
    $raw = $length > 0 ? stream_get_contents(STDIN, $length) : '';
    if (strlen($raw) !== $length) {
        exit(0);  // the pool went away mid-request
    }

    $job = new GatewayJob($app, $raw, $connection, (string) ($request['queue'] ?? 'default'));
    $events = $app->bound('events') ? $app['events'] : null;
    $app->instance(
        Illuminate\Http\Client\Factory::class,
        new KeyedHttpFactory($events, (string) ($request['key'] ?? ''))
    );
    Illuminate\Support\Facades\Facade::clearResolvedInstance(Illuminate\Http\Client\Factory::class);
    $error = null;
    try {
        if (($request['op'] ?? '') === 'fail') {
            $job->fail(new Illuminate\Queue\MaxAttemptsExceededException((string) ($request['message'] ?? '')));
        } else {
            $options = new Illuminate\Queue\WorkerOptions(
                'default', (string) ($request['backoff'] ?? '0'), $memoryLimit, 0, 0, (int) ($request['tries'] ?? 1)
            );
            $worker->process($connection, $job, $options);
        }
    } catch (Throwable $e) {
        $error = $e;
        $exceptions->report($e);
    }
    if (method_exists($app, 'forgetScopedInstances')) {
        $app->forgetScopedInstances();
    }
    Illuminate\Support\Facades\Facade::clearResolvedInstances();
    $last = ($error && $lostConnection($error)) || memory_get_usage(true) / 1048576 >= $memoryLimit;
    $send($job->answer($error) + ['last' => $last]);
    if ($last) {
        exit(0);
    }
}
