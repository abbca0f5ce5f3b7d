<?php

// Not blazz's (Redis there): jobs such as ProcessWhatsAppWebhookJob run inline.
return [
    'default' => env('QUEUE_CONNECTION', 'sync'),
    'connections' => ['sync' => ['driver' => 'sync']],
    'failed' => ['driver' => 'null'],
];
