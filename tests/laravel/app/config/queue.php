<?php

return [
    'default' => env('QUEUE_CONNECTION', 'redis'),
    'connections' => [
        env('QUEUE_CONNECTION', 'redis') => [
            'driver' => 'redis',
            'connection' => 'default',
            'queue' => 'default',
            'retry_after' => 90,
            'block_for' => null,
        ],
    ],
    'failed' => [
        'driver' => 'database-uuids',
        'database' => 'mysql',
        'table' => 'failed_jobs',
    ],
];
