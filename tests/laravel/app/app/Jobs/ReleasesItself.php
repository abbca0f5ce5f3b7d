<?php

namespace App\Jobs;

/** Releases itself for 30 s on its first attempt, then writes its row. */
class ReleasesItself extends RecordsRuns
{
    public function handle(): void
    {
        $this->record('ran');
        if ($this->attempts() === 1) {
            $this->release(30);
        }
    }
}
