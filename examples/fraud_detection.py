"""Fraud detection: Flink's fraud-detection walkthrough, in event time.

Run it:  aioflow run examples/fraud_detection.py:app

Card fraudsters often test a stolen card with a tiny purchase and then make a big one.
This job flags an account when a small transaction (< 1.00) is followed by a large one
(> 500.00) within one minute of event time. It shows:

- a source with event time: ``timestamps=`` reads each transaction's ``ts`` (int ms) and
  ``af.BoundedOutOfOrderness(15_000)`` lets transactions of different accounts arrive up
  to 15 s out of order;
- a ``KeyedProcessFunction`` keyed by account, with two value states: the pending small
  transaction (the "flag") and the time its flag expires;
- an event-time timer, one minute after the small transaction:
  ``ctx.timer_service.register_event_time_timer(...)``. Any next transaction of the
  account deletes it (``delete_event_time_timer``) and clears the flag; if none comes,
  ``on_timer`` clears it when the watermark passes that minute.

Unlike the Flink walkthrough, which uses a processing-time timer, this version decides
in event time, so it gives the same alerts on every run, however fast the file is read.
The watermark lags behind the records (by 15 s here, and until the end of input when a
small file is read in one batch), so the timer may not have fired yet when a late
transaction more than a minute later is processed: ``process_element`` therefore also
compares the two timestamps. The timer is what bounds the state: the flag is cleared
even if the account never makes another transaction.

Expected output (one alert per line)::

    {'account': 'acc-1', 'small': 0.5, 'large': 750.0, 'seconds_apart': 30.0, 'ts': 1704067230000}
    {'account': 'acc-4', 'small': 0.75, 'large': 505.5, 'seconds_apart': 60.0, 'ts': 1704067385000}
    {'account': 'acc-1', 'small': 0.01, 'large': 2500.0, 'seconds_apart': 5.0, 'ts': 1704067445000}

acc-2 (0.25, then 980.00 61 s later) and acc-3 (0.99, then 35.00, then 620.00) are not
flagged; acc-5's 1.00 is not small.
"""

from pathlib import Path

import aioflow as af

DATA = Path(__file__).parent / "data" / "transactions.jsonl"

SMALL_AMOUNT = 1.00
LARGE_AMOUNT = 500.00
ONE_MINUTE = 60_000  # ms

app = af.App("fraud_detection")

transactions = app.source(
    af.read_jsonl(DATA),
    name="transactions",
    timestamps=lambda tx: tx["ts"],
    watermarks=af.BoundedOutOfOrderness(15_000),
)


@transactions.key_by(lambda tx: tx["account"]).process
class FraudDetector(af.KeyedProcessFunction):
    def open(self, ctx):
        self.flag = ctx.value_state("flag")  # the last transaction, if it was small
        self.timer = ctx.value_state("timer")  # when the flag expires

    def process_element(self, tx, ctx):
        small = self.flag.value()
        if small is not None:
            # The previous transaction of this account was small.
            if tx["amount"] > LARGE_AMOUNT and ctx.timestamp - small["ts"] <= ONE_MINUTE:
                yield {
                    "account": ctx.key,
                    "small": small["amount"],
                    "large": tx["amount"],
                    "seconds_apart": (ctx.timestamp - small["ts"]) / 1000,
                    "ts": ctx.timestamp,
                }
            self.clean_up(ctx)  # whatever this transaction is, the pattern is broken
        if tx["amount"] < SMALL_AMOUNT:
            self.flag.update({"amount": tx["amount"], "ts": ctx.timestamp})
            expires = ctx.timestamp + ONE_MINUTE
            ctx.timer_service.register_event_time_timer(expires)
            self.timer.update(expires)

    def on_timer(self, timestamp, ctx):
        # The watermark passed the end of the minute: no large transaction came in time.
        self.flag.clear()
        self.timer.clear()

    def clean_up(self, ctx):
        ctx.timer_service.delete_event_time_timer(self.timer.value())
        self.flag.clear()
        self.timer.clear()


FraudDetector.sink(af.PrintSink(), name="alerts")

if __name__ == "__main__":
    app.run()
