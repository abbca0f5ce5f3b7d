<?php

// Not blazz's (Reverb there): broadcasts go nowhere.
return [
    'default' => 'null',
    'connections' => ['null' => ['driver' => 'null']],
];
