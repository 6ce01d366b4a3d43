"""Lab 2 reference solution (staff only; not part of the starter)."""
from collections import Counter


def mean(xs):
    if not xs:
        raise ValueError("mean of an empty list")
    return sum(xs) / len(xs)


def median(xs):
    if not xs:
        raise ValueError("median of an empty list")
    s = sorted(xs)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def mode(xs):
    if not xs:
        raise ValueError("mode of an empty list")
    counts = Counter(xs)
    best = max(counts.values())
    return min(x for x, k in counts.items() if k == best)
