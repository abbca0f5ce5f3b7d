<?php

// Not blazz's (Redis there): a file store, shared by the web server and the client's CLI.
return [
    'default' => env('CACHE_DRIVER', 'file'),
    'stores' => [
        'file' => ['driver' => 'file', 'path' => storage_path('framework/cache/data')],
    ],
    'prefix' => 'blazz_cache',
];
