<?php

namespace App\Jobs;

/** Writes one row and is done. */
class WriteRow extends RecordsRuns
{
    public function handle(): void
    {
        $this->record('ran');
    }
}
