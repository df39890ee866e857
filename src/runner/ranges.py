"""Valid values of an option, written beside it: schema fields (`runner.config.valid`) and
constructor parameters (`Annotated[float, NON_NEGATIVE]`), checked before anything is built."""
from dataclasses import dataclass
from typing import Any, Optional, Sequence


@dataclass(frozen=True)
class Range:
    """lo <= value <= hi (open ends exclude the bound); `note` says what null means."""

    lo: Optional[float] = None
    hi: Optional[float] = None
    lo_open: bool = False
    hi_open: bool = False
    note: str = ""

    def ok(self, v: Any) -> bool:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return False
        return ((self.lo is None or (v > self.lo if self.lo_open else v >= self.lo))
                and (self.hi is None or (v < self.hi if self.hi_open else v <= self.hi)))

    def __str__(self) -> str:
        lo, hi = (b if b is None or isinstance(b, int) else f"{b:g}" for b in (self.lo, self.hi))
        if self.lo is not None and self.hi is not None:
            text = f"{'(' if self.lo_open else '['}{lo}, {hi}{')' if self.hi_open else ']'}"
        elif self.lo is not None:
            text = f"{'>' if self.lo_open else '>='} {lo}"
        else:
            text = f"{'<' if self.hi_open else '<='} {hi}"
        return text + (f", or null ({self.note})" if self.note else "")


@dataclass(frozen=True)
class OneOf:
    choices: Sequence[Any]

    def ok(self, v: Any) -> bool:
        return v in self.choices

    def __str__(self) -> str:
        return "one of " + ", ".join("null" if c is None else str(c) for c in self.choices)


def at_least(lo: float, note: str = "") -> Range:
    return Range(lo=lo, note=note)


POSITIVE, NON_NEGATIVE, UNIT = Range(lo=0, lo_open=True), Range(lo=0), Range(0, 1)
