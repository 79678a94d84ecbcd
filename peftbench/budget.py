"""Matched trainable-parameter budgets: one solver for every method plugin.

A budget counts the method's own parameters (the task head is the same for every method
and reported separately). For a method with an integer knob the solver finds the knob
whose count is closest to the budget (ties go to the smaller knob), counting exactly by
applying the method to the model on the ``meta`` device, so third-party methods need no
formula. Counts are assumed monotone in the knob: exponential search then bisection.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass

from .errors import PeftbenchError, PluginFailure
from .method import apply_method

MAX_DEVIATION_PCT = 25.0
KNOB_CAP = 1 << 20
_COUNT = re.compile(r"^(\d+(?:\.\d*)?|\.\d+)(?:e(\d+))?([kmb]?)$", re.I)
_SUFFIX = {"": 1, "k": 1e3, "m": 1e6, "b": 1e9}


@dataclass(frozen=True)
class Budget:
    text: str
    count: float | None = None  # absolute count
    percent: float | None = None  # of the base model's parameters
    ref_spec: str | None = None  # "lora" or "lora[alpha=32]"
    ref_knob: int | None = None
    ref_knob_name: str | None = None  # "r" in lora:r=8


def split_top(text: str) -> list[str]:
    """Split on commas outside [brackets]."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur.strip())
            cur = ""
        else:
            cur += ch
    parts.append(cur.strip())
    return [p for p in parts if p]


def parse_budget(text: str) -> Budget:
    t = text.strip()
    hint = "use a count (73728, 75k, 1.2M), a percentage (0.3%) or a reference (lora:r=8)"
    if t.endswith("%"):
        try:
            pct = float(t[:-1])
        except ValueError:
            raise PeftbenchError(f"--budget {text!r} is not a valid percentage; {hint}") from None
        if not 0 < pct <= 100:
            raise PeftbenchError(f"--budget {text}: a percentage must be in (0, 100]")
        return Budget(t, percent=pct)
    m = _COUNT.match(t)
    if m:
        value = float(m.group(1)) * (10 ** int(m.group(2) or 0)) * _SUFFIX[m.group(3).lower()]
        if value < 1:
            raise PeftbenchError(f"--budget {text}: a count must be at least 1")
        return Budget(t, count=value)
    ref = re.match(r"^(.+):(\w+)=(-?\d+)$", t)
    if ref:
        if int(ref.group(3)) < 1:
            raise PeftbenchError(f"--budget {text}: a reference's size must be a positive integer, e.g. "
                                 f"{ref.group(1)}:{ref.group(2)}=8")
        return Budget(t, ref_spec=ref.group(1), ref_knob=int(ref.group(3)), ref_knob_name=ref.group(2))
    raise PeftbenchError(f"--budget {text!r} is not understood; {hint}")


def parse_budgets(text: str) -> list[Budget]:
    return [parse_budget(p) for p in split_top(text)]


@dataclass(frozen=True)
class Solution:
    method: str  # the method's label
    knob: str | None
    knob_value: int | None
    params: int
    budget: int
    fixed: bool

    @property
    def deviation_pct(self) -> float:
        return 100.0 * (self.params - self.budget) / self.budget


def random_on_meta():
    """While a method is applied to the meta model: random tensors its code draws without naming a
    device are drawn on the meta device (shape only; a generator it passes is dropped). Counting
    needs no values, and peft's FourierFT draws a CPU permutation of every adapted weight's entries
    (151M int64 per GPT-3 175B matrix: minutes per count, and a budget solve counts many times)."""
    from torch.overrides import TorchFunctionMode

    random = {"randperm", "randn", "rand", "randint"}

    class RandomOnMeta(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if getattr(func, "__name__", None) in random and kwargs.get("device") is None:
                kwargs = {k: v for k, v in kwargs.items() if k != "generator"} | {"device": "meta"}
            return func(*args, **kwargs)

    return RandomOnMeta()


class Counter:
    """Counts a method's own parameters on a meta-device copy of the model; cached.

    A method whose ``apply`` cannot run on the meta device (it reads values, e.g. with ``.item()``)
    is counted on a real CPU copy built from the config by ``build_real()`` instead (random
    weights: the count does not depend on them); ``fallbacks`` says which methods were, and why.
    """

    def __init__(self, meta_model, build_real=None):
        self.meta = meta_model
        from .method import base_parameter_count

        self.base = base_parameter_count(meta_model)
        self._cache: dict = {}
        self._build_real = build_real
        self._real = None
        self.fallbacks: dict[str, str] = {}

    def count(self, method, options: dict, knob) -> int:
        key = (method.name, repr(sorted(options.items())), knob)
        if key not in self._cache:
            self._cache[key] = self._count(method, options, knob)
        return self._cache[key]

    def _count(self, method, options, knob) -> int:
        try:
            with random_on_meta():
                return apply_method(method, copy.deepcopy(self.meta), knob, options)[1].method
        except PluginFailure as e:
            if self._build_real is None:
                raise
            why = str(e)
        if self._real is None:
            self._real = self._build_real()
        n = apply_method(method, copy.deepcopy(self._real), knob, options)[1].method  # its failure here is its own
        self.fallbacks.setdefault(method.name, why)  # said only where the CPU copy counted it
        return n


def budget_params(budget: Budget, counter: Counter, resolve_ref) -> int:
    """The budget as a parameter count. ``resolve_ref(spec) -> (method, options)``."""
    if budget.count is not None:
        n = int(round(budget.count))
    elif budget.percent is not None:
        n = int(round(counter.base * budget.percent / 100))
    else:
        method, options = resolve_ref(budget.ref_spec)
        if method.knob is None:
            raise PeftbenchError(f"--budget {budget.text}: {method.name} has no size knob; use a method with one, e.g. lora:r=8")
        if budget.ref_knob_name and budget.ref_knob_name != method.knob:
            raise PeftbenchError(
                f"--budget {budget.text}: {method.name}'s knob is {method.knob}, not {budget.ref_knob_name}; "
                f"write {budget.ref_spec}:{method.knob}={budget.ref_knob}"
            )
        n = counter.count(method, options, method.check_knob(budget.ref_knob))
    if n > counter.base:
        raise PeftbenchError(
            f"--budget {budget.text} = {n:,} parameters exceeds the model's {counter.base:,}; choose a smaller budget"
        )
    return max(1, n)


class OutOfReach(PeftbenchError):
    """No knob value of the method trains the budget within MAX_DEVIATION_PCT."""


def solve(method, options: dict, target: int, counter: Counter, label: str | None = None) -> Solution:
    label = label or method.name
    if method.knob is None:
        n = counter.count(method, options, None)
        return Solution(label, None, None, n, target, fixed=True)

    def count(k):
        return counter.count(method, options, k)

    hi = _first_knob(lambda k: count(k) >= target)
    if hi is None:
        best = KNOB_CAP
    else:
        lo = hi - 1  # count(lo) < target <= count(hi), or hi == 1
        best = hi if lo < 1 or abs(count(hi) - target) < abs(count(lo) - target) else lo
    solution = Solution(label, method.knob, best, count(best), target, fixed=False)
    if abs(solution.deviation_pct) > MAX_DEVIATION_PCT:
        k_max = _largest_knob_within(count, counter.base)
        largest = f"{count(k_max):,} at {method.knob}={k_max}" if k_max else "none within the model's size"
        closest = "" if best in (1, k_max) else f"; the closest is {solution.params:,} at {method.knob}={best}"
        raise OutOfReach(
            f"budget {target:,} is out of reach for {label} (within {MAX_DEVIATION_PCT:.0f}%): its counts run from "
            f"{count(1):,} at {method.knob}=1 to {largest}{closest} ({solution.deviation_pct:+.1f}%); "
            "choose a budget in that range"
        )
    return solution


def _first_knob(pred) -> int | None:
    """The smallest knob in [1, KNOB_CAP] for which the monotone ``pred`` holds, or None:
    exponential search, then bisection."""
    hi = 1
    while not pred(hi) and hi < KNOB_CAP:
        hi *= 2
    if not pred(hi):
        return None
    lo = hi // 2  # pred(lo) is false, or lo == 0
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if pred(mid):
            hi = mid
        else:
            lo = mid
    return hi


def _largest_knob_within(count, limit: int) -> int | None:
    """The largest knob whose count does not exceed ``limit`` (the base model's size)."""
    over = _first_knob(lambda k: count(k) > limit)
    return KNOB_CAP if over is None else (over - 1 or None)


def brute_force(method, options, target, counter) -> int:
    """Reference solver for tests: try every knob value from 1 until the count passes twice
    the budget (no bisection, no monotonicity needed below that point)."""
    best, k = 1, 1
    while True:
        n = counter.count(method, options, k)
        if abs(n - target) < abs(counter.count(method, options, best) - target):
            best = k
        if n > 2 * target or k >= KNOB_CAP:
            return best
        k += 1
