<?php

namespace App\Http;

use Illuminate\Foundation\Http\Kernel as HttpKernel;

/*
 * Not blazz's Kernel (Laravel 12: $middlewareAliases, and middleware of its own this test
 * does not carry): Laravel 8's $routeMiddleware with the two aliases blazz's routes/api.php
 * uses for the WhatsApp routes, and its `api` group without its workspace rate limiter.
 */
class Kernel extends HttpKernel
{
    protected $middleware = [
        \Illuminate\Foundation\Http\Middleware\ValidatePostSize::class,
        \Illuminate\Foundation\Http\Middleware\ConvertEmptyStringsToNull::class,
    ];

    protected $middlewareGroups = [
        'api' => [
            \Illuminate\Routing\Middleware\SubstituteBindings::class,
        ],
    ];

    protected $routeMiddleware = [
        'throttle' => \Illuminate\Routing\Middleware\ThrottleRequests::class,
        'whatsapp.hmac' => \App\Http\Middleware\VerifyWhatsAppHmac::class,
    ];
}
