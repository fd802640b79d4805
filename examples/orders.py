"""A JSON-lines pipeline: parse orders, route bad lines to a dead-letter file, keep the
big orders, tag them, and write them out as JSON lines.

Run it:  aioflow run examples/orders.py:app

- ``on_error=dead_letters`` sends the malformed line of ``orders.jsonl`` to a side output
  instead of failing the job; it is written to ``out/dead_letters.jsonl``, its raw bytes
  decoded to text so that the JSON line stays readable.
- Big orders are written to ``out/big_orders.jsonl`` and printed.
"""

from pathlib import Path

import aioflow as af

HERE = Path(__file__).parent
OUT = HERE / "out"

app = af.App("orders")

dead_letters = af.OutputTag("dead_letters")
orders = app.source(af.read_jsonl(HERE / "data" / "orders.jsonl", on_error=dead_letters), name="orders")

big = orders.filter(lambda order: order["amount"] > 50, name="big")


@big.map
def tagged(order: dict) -> dict:
    return {"user": order["user"], "amount": round(order["amount"] * 1.1, 2), "order": order["order"]}


tagged.sink(af.FileSink(OUT / "big_orders.jsonl"), name="big_orders_file")
tagged.sink(af.PrintSink(), name="print")


@orders.get_side_output(dead_letters).map
def readable(bad: af.BadRecord) -> dict:
    """JSON has no bytes: show ``raw`` as text, any invalid UTF-8 as ``\\x..`` escapes."""
    raw = bad.raw.decode("utf-8", "backslashreplace")
    return {"source": bad.source, "location": bad.location, "error": bad.error, "raw": raw}


readable.sink(af.FileSink(OUT / "dead_letters.jsonl"), name="dead_letter_file")

if __name__ == "__main__":
    app.run()
