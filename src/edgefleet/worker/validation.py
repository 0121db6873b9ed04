"""The twin step's figures: a validation set read once, the candidate's answers on the twins'
agents, accuracy or agreement, latency percentiles, an optional load test.

The validation set is an ``.npz`` holding the model's inputs by name (one row per example), the
labels under ``labels`` (``twin.labels``) and optionally reference outputs under ``reference``
(``twin.reference``: the champion's answers, for agreement). An answer is compared by its class:
an integer output of one value per row is the class itself, a score output the argmax of its row.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.core.errors import EdgefleetError, InvalidArgument, NotFound

#: the most validation rows one twin is asked (each is one Predict, timed)
MAX_ROWS_PER_TWIN = 2000

Predict = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]


@dataclass(frozen=True)
class ValidationSet:
    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None
    reference: np.ndarray | None

    @property
    def rows(self) -> int:
        return len(next(iter(self.inputs.values())))

    def row(self, i: int) -> dict[str, np.ndarray]:
        return {name: values[i : i + 1] for name, values in self.inputs.items()}


def load_validation(path: Path, input_names: list[str], labels: str, reference: str) -> ValidationSet:
    """The set in ``path``; NOT_FOUND when missing, INVALID_ARGUMENT when it lacks an input or
    its arrays disagree in rows."""
    if not path.is_file():
        raise NotFound(f"validation set {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: np.asarray(data[key]) for key in data.files}
    except (OSError, ValueError) as exc:
        raise InvalidArgument(f"validation set {path} is not a readable .npz: {exc}") from exc
    missing = [n for n in input_names if n not in arrays]
    if missing:
        raise InvalidArgument(
            f"validation set {path} lacks the model input(s) {', '.join(missing)} (it has: {', '.join(sorted(arrays))})"
        )
    inputs = {n: arrays[n] for n in input_names}
    out = ValidationSet(inputs, arrays.get(labels), arrays.get(reference))
    sizes = {len(a) for a in inputs.values()} | {len(a) for a in (out.labels, out.reference) if a is not None}
    if len(sizes) != 1 or out.rows == 0:
        raise InvalidArgument(
            f"validation set {path}: its arrays disagree in rows or are empty ({sorted(sizes)})"
        )
    return out


def classes(answer: np.ndarray) -> np.ndarray:
    """The class of each row of an answer: the value of an integer output, else the argmax."""
    a = np.asarray(answer)
    out: np.ndarray
    if a.ndim <= 1 or (a.ndim == 2 and a.shape[1] == 1 and np.issubdtype(a.dtype, np.integer)):
        out = a.reshape(-1).astype(np.int64)
    else:
        out = a.reshape(a.shape[0], -1).argmax(axis=1).astype(np.int64)
    return out


def percentile_ms(latencies: list[float], q: float) -> float | None:
    return round(float(np.percentile(np.array(latencies) * 1000.0, q)), 3) if latencies else None


@dataclass
class Answers:
    """One twin's answers to the validation set and the time of each call."""

    predicted: np.ndarray
    latencies: list[float]


def predictor(client: Any, model: str) -> Predict:
    """Predict on ``model`` through an :class:`~edgefleet.client.AgentClient`."""

    def predict(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        answer: dict[str, np.ndarray] = client.predict(model, inputs)
        return answer

    return predict


def ask(predict: Predict, data: ValidationSet, output: str | None, check: Callable[[], None]) -> Answers:
    """Each validation row as one Predict, timed (at most :data:`MAX_ROWS_PER_TWIN`)."""
    predicted: list[int] = []
    latencies: list[float] = []
    for i in range(min(data.rows, MAX_ROWS_PER_TWIN)):
        if i % 64 == 0:
            check()
        started = time.perf_counter()
        answer = predict(data.row(i))
        latencies.append(time.perf_counter() - started)
        predicted.append(int(classes(pick(answer, output))[0]))
    return Answers(np.array(predicted, dtype=np.int64), latencies)


def pick(answer: dict[str, np.ndarray], output: str | None) -> np.ndarray:
    """The output compared: ``output`` by name, else the first integer output, else the first."""
    if output is not None:
        if output not in answer:
            raise InvalidArgument(
                f"twin.output {output!r} is not an output of the model (it has: {', '.join(answer)})"
            )
        return answer[output]
    for value in answer.values():
        if np.issubdtype(np.asarray(value).dtype, np.integer):
            return value
    return next(iter(answer.values()))


def agreement(predicted: np.ndarray, expected: np.ndarray) -> float:
    n = min(len(predicted), len(expected))
    return round(float(np.mean(predicted[:n] == classes(expected)[:n])), 6)


@dataclass(frozen=True)
class LoadFigures:
    seconds: float
    concurrency: int
    calls: int
    errors: int
    p50_ms: float | None
    p99_ms: float | None
    first_error: str | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "Seconds": self.seconds,
            "Concurrency": self.concurrency,
            "Calls": self.calls,
            "Errors": self.errors,
            "P50Ms": self.p50_ms,
            "P99Ms": self.p99_ms,
            "FirstError": self.first_error,
        }


def load_test(
    clients: list[Predict], rows: list[dict[str, np.ndarray]], seconds: float, concurrency: int
) -> LoadFigures:
    """``concurrency`` threads calling Predict for ``seconds``, spread over ``clients`` (one per
    thread, round robin) and cycling through ``rows``."""
    stop = threading.Event()
    lock = threading.Lock()
    latencies: list[float] = []
    errors: list[str] = []

    def work(index: int) -> None:
        predict = clients[index % len(clients)]
        mine: list[float] = []
        i = index
        while not stop.is_set():
            started = time.perf_counter()
            try:
                predict(rows[i % len(rows)])
            except EdgefleetError as exc:
                with lock:
                    errors.append(str(exc))
            else:
                mine.append(time.perf_counter() - started)
            i += concurrency
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=work, args=(k,), daemon=True) for k in range(concurrency)]
    for t in threads:
        t.start()
    stop.wait(seconds)
    stop.set()
    for t in threads:
        t.join()
    return LoadFigures(
        seconds,
        concurrency,
        len(latencies) + len(errors),
        len(errors),
        percentile_ms(latencies, 50),
        percentile_ms(latencies, 99),
        errors[0][:300] if errors else None,
    )
