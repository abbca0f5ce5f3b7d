<?php

namespace App\Jobs;

use Illuminate\Support\Facades\Http;
use RuntimeException;

/** Two sends and a read through Laravel's HTTP client, then a failure: tried twice. */
class PostsTwice extends RecordsRuns
{
    public $tries = 2;

    public $backoff = 0;

    public function handle(): void
    {
        $this->record('ran');
        Http::get($this->note.'/status');
        Http::post($this->note.'/send', ['n' => 1]);
        Http::withHeaders(['Idempotency-Key' => 'own-key'])->post($this->note.'/send', ['n' => 2]);
        Http::post($this->note.'/send', ['n' => 3]);

        throw new RuntimeException('after the sends');
    }
}
