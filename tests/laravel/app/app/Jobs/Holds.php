<?php

namespace App\Jobs;

use Illuminate\Support\Facades\Redis;

/** Holds its PHP process until the test pushes to the Redis list `t:gate` (30 s at most). */
class Holds extends RecordsRuns
{
    public $timeout = 60;

    public function handle(): void
    {
        $this->record('ran');
        Redis::connection()->blpop('t:gate', 30);
    }
}
