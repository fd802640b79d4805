"""Handwritten digits scored a batch at a time, with the accuracy per window of event time.

Run it:

    aioflow run examples/digits_scoring.py:app

The streaming version of the classic MNIST job, on scikit-learn's bundled 8×8 digits (no
download): a classifier is trained at start-up on the first half of the 1,797 images;
the other half streams through the job as events, one every 50 ms of event time. The
job scores them with ``map_batch``: the model's ``predict`` gets up to 64 images at once
instead of one call per image, which is where a
model spends its time. It then counts the images and the correct predictions per
10-second tumbling window of event time and prints a line per window::

    {'start': 0, 'images': 200, 'correct': 197, 'accuracy': 0.985}

Needs scikit-learn (``pip install scikit-learn``; the dev install has it).
"""

import numpy as np
from sklearn.datasets import load_digits
from sklearn.svm import SVC

import aioflow as af

WINDOW = 10_000  # ms
EVERY = 50  # ms of event time between two images

digits = load_digits()
half = len(digits.images) // 2
model = SVC(gamma=0.001).fit(digits.data[:half], digits.target[:half])  # trained at start-up

# The images to score: pixels, the true label (to measure accuracy) and an event time.
IMAGES = [
    {"id": i, "ts": (i - half) * EVERY, "label": int(digits.target[i]), "pixels": digits.data[i].tolist()}
    for i in range(half, len(digits.images))
]


def predict(images):
    """The model's predictions for a batch of images: one ``predict`` call for all of them."""
    predicted = model.predict(np.array([image["pixels"] for image in images]))
    return [
        {"id": image["id"], "label": image["label"], "predicted": int(digit)}
        for image, digit in zip(images, predicted, strict=True)
    ]


class Accuracy(af.AggregateFunction):
    """(images, correct) of a window."""

    def create_accumulator(self):
        return (0, 0)

    def add(self, scored, accumulator):
        return (accumulator[0] + 1, accumulator[1] + (scored["predicted"] == scored["label"]))

    def get_result(self, accumulator):
        return accumulator

    def merge(self, a, b):
        return (a[0] + b[0], a[1] + b[1])


class PerWindow(af.ProcessWindowFunction):
    def process(self, key, context, results):
        images, correct = results[0]
        yield {
            "start": context.window.start,
            "images": images,
            "correct": correct,
            "accuracy": round(correct / images, 3),
        }


app = af.App("digits_scoring")
images = app.source(IMAGES, name="images", timestamps=lambda image: image["ts"], watermarks=af.MonotonousTimestamps())
scored = images.map_batch(predict, max_batch_size=64, name="predict")  # results keep the images' event time
accuracy = (
    scored.key_by(lambda _: "all")
    .window(af.TumblingEventTimeWindows(WINDOW))
    .aggregate(Accuracy(), window_function=PerWindow(), name="accuracy")
)
accuracy.sink(af.PrintSink())

if __name__ == "__main__":
    app.run()
