"""Dynamic rules: alerting rules changed at runtime, with broadcast state.

Run it:  aioflow run examples/dynamic_rules.py:app

Orders (``{"order", "user", "amount", "ts"}``) are checked against alerting rules that
arrive on a second stream (``{"rule", "threshold", "ts"}``: alert on orders above
``threshold`` from ``ts`` on; ``"threshold": null`` removes the rule). It shows the
broadcast state pattern:

- ``rules.broadcast("rules")`` sends every rule to every subtask of the next operator;
- ``orders.key_by(user).connect(rules_bcast).process(RuleEngine)`` runs a
  ``KeyedBroadcastProcessFunction``: ``process_broadcast_element`` writes the rule into
  the broadcast state ``ctx.broadcast_state("rules")``; the keyed side only reads it.

As in Flink, nothing orders the two inputs: an order can arrive before a rule with an
earlier timestamp. To give the same alerts on every run, the rule engine works in event
time: each rule change is kept as a new *version* from its timestamp on, and each order
is judged by the rules in force at the order's timestamp. ``process_element`` buffers the
order in keyed list state and registers an event-time timer at its timestamp; the timer
fires once the watermark, the minimum over both inputs, has passed it, that is once
every rule up to that time has arrived. ``on_timer`` then reads the broadcast state
(read-only, as in ``process_element``) and emits the alerts, in timestamp order.

Expected output::

    {'order': 1, 'user': 'ann', 'amount': 120.0, 'rule': 'big', 'threshold': 100.0, 'alerts_for_user': 1}
    {'order': 4, 'user': 'cat', 'amount': 1500.0, 'rule': 'big', 'threshold': 100.0, 'alerts_for_user': 1}
    {'order': 5, 'user': 'bob', 'amount': 180.0, 'rule': 'big', 'threshold': 100.0, 'alerts_for_user': 1}
    {'order': 6, 'user': 'cat', 'amount': 1200.0, 'rule': 'big', 'threshold': 100.0, 'alerts_for_user': 2}
    {'order': 6, 'user': 'cat', 'amount': 1200.0, 'rule': 'huge', 'threshold': 1000.0, 'alerts_for_user': 3}
    {'order': 8, 'user': 'ann', 'amount': 260.0, 'rule': 'big', 'threshold': 250.0, 'alerts_for_user': 2}
    {'order': 9, 'user': 'bob', 'amount': 300.0, 'rule': 'big', 'threshold': 250.0, 'alerts_for_user': 2}
    {'order': 10, 'user': 'cat', 'amount': 5000.0, 'rule': 'big', 'threshold': 250.0, 'alerts_for_user': 4}

Order 4 (1500.00 at 0:50) is not "huge": that rule starts at 1:00. "big" is raised to 250
at 2:00, so order 7 (200.00 at 2:10) passes; "huge" is removed at 3:00, before order 10.
"""

from bisect import insort
from pathlib import Path

import aioflow as af

DATA = Path(__file__).parent / "data"

app = af.App("dynamic_rules")

orders = app.source(
    af.read_jsonl(DATA / "rule_orders.jsonl"),
    name="orders",
    timestamps=lambda order: order["ts"],
    watermarks=af.BoundedOutOfOrderness(10_000),
)
rules = app.source(
    af.read_jsonl(DATA / "rules.jsonl"),
    name="rules",
    timestamps=lambda rule: rule["ts"],
    watermarks=af.MonotonousTimestamps(),
)
rules_bcast = rules.broadcast("rules")


def rule_in_force(versions, timestamp):
    """The threshold of the last version at or before ``timestamp`` (``None``: no rule)."""
    threshold = None
    for since, value in versions:
        if since > timestamp:
            break
        threshold = value
    return threshold


@orders.key_by(lambda order: order["user"]).connect(rules_bcast).process
class RuleEngine(af.KeyedBroadcastProcessFunction):
    def open(self, ctx):
        self.pending = ctx.list_state("pending")  # this user's orders not judged yet
        self.alerts = ctx.value_state("alerts", default=0)  # alerts so far, per user

    def process_broadcast_element(self, rule, ctx):
        # Runs on every subtask, so every subtask's broadcast state stays the same.
        rules = ctx.broadcast_state("rules")
        versions = list(rules.get(rule["rule"], []))
        insort(versions, (ctx.timestamp, rule["threshold"]), key=lambda version: version[0])
        rules.put(rule["rule"], versions)
        yield from ()

    def process_element(self, order, ctx):
        self.pending.add(order)
        ctx.timer_service.register_event_time_timer(ctx.timestamp)  # once per user and time
        yield from ()

    def on_timer(self, timestamp, ctx):
        rules = ctx.broadcast_state("rules")
        due = [order for order in self.pending.get() if order["ts"] <= timestamp]
        self.pending.update([order for order in self.pending.get() if order["ts"] > timestamp])
        for order in due:
            for name, versions in sorted(rules.items()):
                threshold = rule_in_force(versions, order["ts"])
                if threshold is not None and order["amount"] > threshold:
                    self.alerts.update(self.alerts.value() + 1)
                    yield {
                        "order": order["order"],
                        "user": ctx.key,
                        "amount": order["amount"],
                        "rule": name,
                        "threshold": threshold,
                        "alerts_for_user": self.alerts.value(),
                    }


RuleEngine.sink(af.PrintSink(), name="alerts")

if __name__ == "__main__":
    app.run()
