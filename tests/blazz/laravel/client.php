<?php

/*
 * Not blazz's: runs one method of blazz's WhatsAppServiceClient, as its services call it,
 * in this application: `php client.php METHOD '[args...]'`. Prints the method's answer as
 * JSON, or {"exception": message} when it threw.
 */

$app = require __DIR__.'/bootstrap/app.php';
$app->make(Illuminate\Contracts\Console\Kernel::class)->bootstrap();

[, $method, $args] = $argv;
$client = new App\Services\WhatsApp\WhatsAppServiceClient();
try {
    $answer = $client->{$method}(...json_decode($args, true));
} catch (Exception $e) {
    $answer = ['exception' => get_class($e).': '.$e->getMessage()];
}
echo json_encode($answer, JSON_UNESCAPED_SLASHES);
