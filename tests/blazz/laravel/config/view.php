<?php

// Not blazz's: Laravel renders its error pages (a 401 from the HMAC middleware) with views.
return [
    'paths' => [resource_path('views')],
    'compiled' => storage_path('framework/views'),
];
