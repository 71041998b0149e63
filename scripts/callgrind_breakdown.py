#!/usr/bin/env python3
"""Where a proxy's instructions go: a callgrind profile's exclusive cost grouped by crate.

    scripts/callgrind_breakdown.py PROFILE REQUESTS

Reads one callgrind output file (the dump taken after the counters were zeroed, so it covers the
measured requests only) and prints, per group, instructions per request as tab-separated
`group<TAB>instructions`. Used by scripts/bench-overhead.sh; handy on its own for any profile.

Exclusive cost is what a function spends in its own code, not in the functions it calls, so the
groups add up to the total. Compressed names (`fn=(12) name`, later `fn=(12)`) are resolved as
callgrind defines them; the cost lines that follow a `calls=` line are inclusive costs of the call
and are skipped.
"""

import re
import sys
from collections import Counter

NAME = re.compile(r"^c?fn=\((\d+)\)(?: (.*))?$")
COST = re.compile(r"^(?:[+-]?\d+|\*)\s+(\d+)$")
ALLOCATOR = re.compile(
    r"^(?:malloc|free|realloc|calloc|cfree|_int_\w+|malloc_consolidate|unlink_chunk\S*|"
    r"__rustc::__r\w+|__rust_\w*alloc\w*|_?rjem_\w+|je_\w+|tcache_\w+|arena_\w+|"
    r"\w*memalign\w*|sdallocx|mallocx|rallocx)"
)
GROUPS = [
    ("memory copies (memcpy, memmove, memset)", re.compile(r"^__(?:mem|wmem)\w+|^mem(?:cpy|move|set)\b")),
    ("allocator (malloc, free)", ALLOCATOR),
    ("Pingora (pingora_*)", re.compile(r"^<?(?:&(?:mut )?)?pingora_\w+::")),
    ("HTTP types and parsing (http, httparse, bytes)", re.compile(r"^<?(?:&(?:mut )?)?(?:http|httparse|bytes)::")),
    ("tokio runtime and I/O (tokio, mio)", re.compile(r"^<?(?:&(?:mut )?)?(?:tokio|mio)::")),
    ("the proxy's own code (gateway, plugins; bare_proxy)", re.compile(r"^<?(?:&(?:mut )?)?(?:gateway|plugins|bare_proxy)::")),
    ("metrics (prometheus)", re.compile(r"^<?(?:&(?:mut )?)?prometheus::")),
    ("JSON (serde_json, serde)", re.compile(r"^<?(?:&(?:mut )?)?(?:serde_json|serde)::")),
    ("logging (tracing, log)", re.compile(r"^<?(?:&(?:mut )?)?(?:tracing\w*|log)::")),
    ("Rust standard library (core, alloc, std)", re.compile(r"^<?(?:&(?:mut )?)?(?:core|alloc|std|hashbrown)::")),
]
OTHER = "everything else (libc, kernel entry, other crates)"


def group_of(name: str) -> str:
    for label, pattern in GROUPS:
        if pattern.match(name):
            return label
    return OTHER


def records(path: str):
    """Yield `(function, None, cost)` for a function's own cost and `(caller, callee, cost)` for
    the inclusive cost of a call, with compressed names resolved."""
    names: dict[str, str] = {}
    current = target = None
    in_call = False
    with open(path, encoding="utf-8", errors="replace") as lines:
        for line in lines:
            line = line.rstrip("\n")
            match = NAME.match(line)
            if match:
                ident, name = match.groups()
                if name:
                    names[ident] = name
                if line.startswith("fn="):
                    current = names.get(ident, ident)
                else:
                    target = names.get(ident, ident)
                continue
            if line.startswith("calls="):
                in_call = True
                continue
            match = COST.match(line)
            if match and current is not None:
                yield current, target if in_call else None, int(match.group(1))
            in_call = False


def exclusive_costs(path: str) -> Counter:
    costs: Counter = Counter()
    for function, callee, cost in records(path):
        if callee is None:
            costs[function] += cost
    return costs


def breakdown(path: str, requests: int) -> list[tuple[str, float]]:
    groups: Counter = Counter()
    for name, cost in exclusive_costs(path).items():
        groups[group_of(name)] += cost
    order = [label for label, _ in GROUPS] + [OTHER]
    return [(label, groups[label] / requests) for label in order]


def top_callers(path: str, callee: re.Pattern, count: int) -> list[tuple[str, int]]:
    """The functions that spend most in calls to functions whose name matches `callee`."""
    spent: Counter = Counter()
    for caller, target, cost in records(path):
        if target is not None and callee.match(target):
            spent[caller] += cost
    return spent.most_common(count)


def main() -> None:
    path, requests = sys.argv[1], int(sys.argv[2])
    for label, per_request in breakdown(path, requests):
        print(f"{label}\t{per_request:.0f}")


if __name__ == "__main__":
    main()
