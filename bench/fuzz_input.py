"""The fuzzer's inputs and failures: a `Source` of choices that the random, Hypothesis and atheris
engines each provide, and the `Crash` a failed input is reported as (bench/fuzz.py runs them)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass




class Source:
    """Where a generator's choices come from; every engine provides one."""

    def int(self, lo: int, hi: int) -> int:
        raise NotImplementedError

    def bytes(self, n: int) -> bytes:
        raise NotImplementedError

    def chance(self, p: float) -> bool:
        """True with probability about ``p``; engines that shrink shrink towards False."""
        raise NotImplementedError

    def choice(self, seq: Sequence):
        return seq[self.int(0, len(seq) - 1)]


class RandomSource(Source):
    __slots__ = ("rng",)

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def int(self, lo: int, hi: int) -> int:
        return self.rng.randint(lo, hi)

    def bytes(self, n: int) -> bytes:
        return self.rng.randbytes(n)

    def chance(self, p: float) -> bool:
        return self.rng.random() < p

    def choice(self, seq: Sequence):
        return self.rng.choice(seq)


class HypothesisSource(Source):
    """Choices drawn from a Hypothesis ``st.data()`` object, so failures shrink."""

    def __init__(self, data) -> None:  # data: hypothesis.strategies.DataObject
        from hypothesis import strategies as st

        self.data = data
        self._st = st

    def int(self, lo: int, hi: int) -> int:
        return self.data.draw(self._st.integers(lo, hi))

    def bytes(self, n: int) -> bytes:
        return self.data.draw(self._st.binary(min_size=n, max_size=n))

    def chance(self, p: float) -> bool:
        return self.data.draw(self._st.integers(0, 999)) >= round((1.0 - p) * 1000)


class ProviderSource(Source):
    """Choices from atheris's ``FuzzedDataProvider``; an exhausted provider gives zeros."""

    def __init__(self, provider) -> None:
        self.fdp = provider

    def int(self, lo: int, hi: int) -> int:
        return self.fdp.ConsumeIntInRange(lo, hi)

    def bytes(self, n: int) -> bytes:
        data = self.fdp.ConsumeBytes(n)
        return data + bytes(n - len(data))

    def chance(self, p: float) -> bool:
        return self.fdp.ConsumeProbability() < p


# ====================================================================== failures


class FuzzFailure(AssertionError):
    """A property of a target does not hold (as opposed to an unexpected exception).

    ``kind`` names the property, so that a known defect can be tolerated by kind (see
    :data:`KNOWN_CORE_DEFECTS`) while every other failure still fails the run.
    """

    def __init__(self, message: str, kind: str = "property") -> None:
        super().__init__(f"[{kind}] {message}")
        self.kind = kind


@dataclass
class Crash:
    """One failing input: what went wrong and how to run it again."""

    target: str
    index: int
    error: str
    """The exception's type and message."""
    trace: str
    reproducer: str

    @property
    def signature(self) -> str:
        """Same defect, same signature: the property that failed, or the exception and where it was raised."""
        if self.error.startswith("FuzzFailure: ["):
            return "FuzzFailure" + self.error.split(" ", 1)[1].split("]", 1)[0] + "]"
        where = ""
        for line in self.trace.splitlines():
            if line.strip().startswith("File "):
                where = line.strip()
        return f"{self.error.split(':', 1)[0]} @ {where}"

    def render(self) -> str:
        return (f"--- {self.target} crash at input #{self.index}: {self.error}\n{self.trace.rstrip()}\n"
                f"reproducer:\n{self.reproducer.rstrip()}\n")


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


