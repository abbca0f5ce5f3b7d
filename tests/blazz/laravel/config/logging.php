<?php

// Not blazz's: its default channel and the `whatsapp` channel its client logs to, as files.
return [
    'default' => 'single',
    'channels' => [
        'single' => ['driver' => 'single', 'path' => storage_path('logs/laravel.log'), 'level' => 'debug'],
        'whatsapp' => ['driver' => 'single', 'path' => storage_path('logs/whatsapp.log'), 'level' => 'debug'],
    ],
];
