"""The ``.env`` reader against PHP's own: Debian's phpdotenv, loaded as Laravel 8 loads it.

Hand-picked texts (interpolation, escapes, multi-line values, comments, ``export``, the
errors Laravel stops on) and thousands made at random from the same pieces, each read by both
with and without variables already in the environment: the same values, or both refuse.
"""

from __future__ import annotations

import random
from typing import Any

from gateway.shared.laravel.dotenv import DotenvError, parse_dotenv
from tests.laravel.conftest import php_json

ENV = {"HOME": "/home/app", "APP_NAME": "From env", "EMPTY": ""}

CASES = [
    "A=1\nB=${A}2\nC=\"${A}_x\"\nD='${A}'\nE=${NOPE}\nF=$A\n",
    'APP_NAME=Blazz\nREDIS_PREFIX="${APP_NAME}_database_"\n',
    'S="se\\"cret"\nT="back\\\\slash"\nU="a\\nb\\tc\\fd\\ve\\r"\nV="\\$HOME ${HOME}"\n',
    'BAD="\\q"\n',
    'M="first\nsecond\n# not a comment\nTHIRD=no"\nAFTER=yes\n',
    'OPEN="never closed\nX=1\nY=2\n',
    'Q="a=\\"b\\""\nR=\'x="y\'\nZ=1\n',
    "# comment\n   # indented comment\n\nexport EXPORTED=1\nexport  SPACED=2\nexport\tTAB=3\n",
    "export X=1\n",
    "A=x # note\nB=x#tight\nC=\"x\" # after\nD='x'#tight\nE= # only\nF=\n",
    "A=two words\n",
    "A='unclosed\n",
    "=nothing\n",
    "bad line\n",
    "A=1\nA\nB=${A}\n",
    "HOME=from-file\nH=${HOME}\n",
    "'QUOTED'=1\n\"DQ\"=2\nDOT.NAME=3\nbad-name=4\n",
    'A=1\r\nB="x\r\ny"\rC=3',
    "\ufeffBOM=1\n",
    'A="x"y\n',
    "A=x\"y\"z\nB=x'y'\n",
    "A=${A}\nB=${B}${A}${EMPTY}end\n",
    'A="${HOME}/${APP_NAME}/${NOPE}"\n',
    'A="multi\n"\nB="\n"\nC="line\\\\"\n',
    'JSON={"a":1}\nJ2="{\\"a\\": 1}"\n',
    'A=é${HOME}ü\nB="日本"\n',
    "A=\f\nB=\t\n C = spaced \n",
]

PIECES_NAME = [
    "A",
    "B",
    "APP_NAME",
    "HOME",
    "export AB",
    "export  B",
    "'Q'",
    '"D"',
    "x.y",
    "a-b",
    "",
]
PIECES_EQ = ["=", " = ", "=\t", "==", ""]
PIECES_VALUE = [
    "plain",
    "${A}",
    "${HOME}",
    "${NOPE}",
    "$A",
    "'${A}'",
    '"${A}_x"',
    '"se\\"cret"',
    '"\\\\"',
    '"a\\nb"',
    '"\\x"',
    '"open',
    "'open",
    'close"',
    "# c",
    "x # c",
    "x#c",
    "two words",
    '"two words"',
    "'two words'",
    '"a=\\"b"',
    "\\",
    '"\\$A"',
    "é",
    "",
    '"',
    "'",
    "()[]{}",
    "\t",
]
ENDINGS = ["\n", "\r\n", "\r", "\n\n", "\n# comment\n", "\n  \n"]


def random_text(rng: random.Random) -> str:
    lines = []
    for _ in range(rng.randrange(1, 7)):
        value = "".join(rng.choice(PIECES_VALUE) for _ in range(rng.randrange(0, 3)))
        lines.append(rng.choice(PIECES_NAME) + rng.choice(PIECES_EQ) + value)
        lines.append(rng.choice(ENDINGS))
    return "".join(lines)


def ours(text: str, environ: dict[str, str]) -> dict[str, Any]:
    try:
        return {"values": parse_dotenv(text, environ)}
    except DotenvError as exc:
        return {"error": str(exc)}


def test_the_reader_matches_phpdotenv_on_hand_picked_and_random_texts(php: str) -> None:
    rng = random.Random(19)
    texts = CASES + [random_text(rng) for _ in range(3000)]
    inputs = [(text, environ) for text in texts for environ in ({}, ENV)]
    theirs = php_json(php, "dotenv.php", inputs)
    mismatches = [
        (text, environ, ours(text, environ), want)
        for (text, environ), want in zip(inputs, theirs, strict=True)
        if ours(text, environ) != want
    ]
    assert mismatches == []
    # The suite means something: both kinds of answers, and interpolation, occur.
    assert sum("error" in t for t in theirs) > 100
    assert sum("values" in t for t in theirs) > 100
    assert theirs[2]["values"]["REDIS_PREFIX"] == "Blazz_database_"
