<?php

namespace App\Jobs;

use RuntimeException;
use Throwable;

/** Throws on every attempt; its failed() hook records the exception it is given. */
class Throws extends RecordsRuns
{
    public $tries = 2;

    public $backoff = 0;

    public function handle(): void
    {
        $this->record('ran');

        throw new RuntimeException("boom: {$this->note}");
    }

    public function failed(Throwable $e): void
    {
        $this->record('failed', get_class($e).': '.$e->getMessage());
    }
}
