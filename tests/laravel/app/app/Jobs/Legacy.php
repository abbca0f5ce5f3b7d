<?php

namespace App\Jobs;

use Illuminate\Support\Facades\DB;

/** An old-style string job, `Queue::push('App\Jobs\Legacy', $data)`: Laravel calls fire(). */
class Legacy
{
    public function fire($job, array $data): void
    {
        DB::table('job_runs')->insert([
            'event' => 'fired',
            'note' => $data['note'],
            'attempt' => $job->attempts(),
            'pid' => getmypid(),
        ]);
        $job->delete();
    }
}
