"""Lab 2: descriptive statistics, without the statistics module.

Implement:
    mean(xs)    the arithmetic mean; ValueError on an empty list
    median(xs)  the middle value; for an even count, the mean of the two
                middle values; ValueError on an empty list
    mode(xs)    the most common value; on a tie, the smallest of them;
                ValueError on an empty list
"""


def mean(xs):
    return sum(xs) / len(xs)


def median(xs):
    s = sorted(xs)
    return s[len(s) // 2]


def mode(xs):
    raise NotImplementedError("mode is not written yet")
