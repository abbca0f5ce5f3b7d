<?php

namespace App\Jobs;

use Throwable;

/** Runs far past its one-second timeout; its failed() hook records the exception. */
class Sleeps extends RecordsRuns
{
    public $timeout = 1;

    public $tries = 1;

    public function handle(): void
    {
        $this->record('ran');
        sleep(60);
    }

    public function failed(Throwable $e): void
    {
        $this->record('failed', get_class($e).': '.$e->getMessage());
    }
}
