<?php
// phpdotenv as Laravel 8 loads a .env, for each [text, environment] read as a JSON list on
// stdin: an immutable repository over variables already set, the text read as a file is
// (Str::utf8: its BOM dropped). Answers a JSON list of {"values": {...}} (what the file
// gave, unset names left out) or {"error": "..."}.
require 'Dotenv/autoload.php';

use Dotenv\Dotenv;
use Dotenv\Exception\InvalidFileException;
use Dotenv\Loader\Loader;
use Dotenv\Parser\Parser;
use Dotenv\Repository\Adapter\ArrayAdapter;
use Dotenv\Repository\RepositoryBuilder;
use Dotenv\Store\StringStore;
use Dotenv\Util\Str;

$out = [];
foreach (json_decode(stream_get_contents(STDIN), true) as [$text, $environment]) {
    $adapter = ArrayAdapter::create()->get();
    foreach ($environment as $name => $value) {
        $adapter->write($name, $value);
    }
    $repository = RepositoryBuilder::createWithNoAdapters()->addAdapter($adapter)->immutable()->make();
    $content = Str::utf8($text)->success()->get();
    try {
        $loaded = (new Dotenv(new StringStore($content), new Parser(), new Loader(), $repository))->load();
        $out[] = ['values' => (object) array_filter($loaded, fn ($v) => $v !== null)];
    } catch (InvalidFileException $e) {
        $out[] = ['error' => $e->getMessage()];
    }
}
echo json_encode($out, JSON_UNESCAPED_UNICODE | JSON_UNESCAPED_SLASHES);
