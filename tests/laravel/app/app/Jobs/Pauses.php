<?php

namespace App\Jobs;

/** Hangs on its first attempt (long enough to be killed mid-job), writes its row on the next. */
class Pauses extends RecordsRuns
{
    public $timeout = 30;

    public function handle(): void
    {
        $this->record('ran');
        if ($this->attempts() === 1) {
            sleep(30);
        }
    }
}
