<?php

namespace App\Jobs;

/** A send as the app dispatches it: the pacer reads its public $sessionId without PHP. */
class SendsMessage extends RecordsRuns
{
    public function __construct(public string $note, public string $sessionId)
    {
    }

    public function handle(): void
    {
        $this->record('sent');
    }
}
