<?php
// Laravel's own Str::slug for each name read as a JSON list on stdin, with '_' and '-':
// answers a JSON list of [slug_underscore, slug_dash].
require 'Illuminate/autoload.php';

use Illuminate\Support\Str;

$out = [];
foreach (json_decode(stream_get_contents(STDIN)) as $name) {
    $out[] = [Str::slug($name, '_'), Str::slug($name)];
}
echo json_encode($out, JSON_UNESCAPED_UNICODE);
