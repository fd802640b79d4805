"""Word count over a text file: the streaming "hello world".

Run it:  aioflow run examples/wordcount.py:app

Every line is split into words; words are keyed, and a rolling reduce emits each word's
updated count as it arrives (as Flink's WordCount does). The last line printed for a
word is its total.
"""

import re
from pathlib import Path

import aioflow as af

TEXT = Path(__file__).parent / "data" / "words.txt"

app = af.App("wordcount")

lines = app.source(af.read_text(TEXT), name="lines")


@lines.flat_map
def words(line: str) -> list[tuple[str, int]]:
    return [(word, 1) for word in re.findall(r"[a-z']+", line.lower())]


counts = words.key_by(lambda pair: pair[0]).reduce(lambda a, b: (a[0], a[1] + b[1]), name="counts")
counts.sink(af.PrintSink())

if __name__ == "__main__":
    app.run()
