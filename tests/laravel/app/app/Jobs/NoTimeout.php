<?php

namespace App\Jobs;

/** `$timeout = 0`, Laravel's "no timeout": runs 1.5 s, past the pool's --timeout in the test. */
class NoTimeout extends RecordsRuns
{
    public $timeout = 0;

    public function handle(): void
    {
        usleep(1_500_000);
        $this->record('ran');
    }
}
