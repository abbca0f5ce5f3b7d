<?php

namespace App\Jobs;

use Illuminate\Bus\Queueable;
use Illuminate\Contracts\Queue\ShouldQueue;
use Illuminate\Queue\InteractsWithQueue;
use Illuminate\Support\Facades\DB;

/** What every test job shares: it is queued, and it writes what happened to `job_runs`. */
abstract class RecordsRuns implements ShouldQueue
{
    use InteractsWithQueue, Queueable;

    public function __construct(public string $note)
    {
    }

    protected function record(string $event, ?string $note = null): void
    {
        DB::table('job_runs')->insert([
            'event' => $event,
            'note' => $note ?? $this->note,
            'attempt' => $this->attempts(),
            'pid' => getmypid(),
        ]);
    }
}
