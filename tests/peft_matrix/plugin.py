"""pytest plugin for `run.py`: marks the tests judged inapplicable (with the reason) and counts the outcomes."""

from __future__ import annotations

import json
import os
from collections import Counter, defaultdict

import pytest
from cases import NON_IDENTITY

# Test function of PEFT's matrix → why it does not apply to our methods. Everything not listed here must pass.
INAPPLICABLE: dict[str, str] = {}
# The same, for the rows whose option is by definition not an identity at step 0 (e.g. LoLDU's z_init=ones).
INAPPLICABLE_NON_IDENTITY: dict[str, str] = {
    name: "asserts the freshly injected model equals the base model, but this option (as in the official code) "
    "changes the output at step 0; the rest of the test is covered by the same method's identity rows"
    for name in ("test_disable_adapters", "test_disable_adapters_with_merging")
}

_outcomes: Counter[str] = Counter()
_reasons: dict[str, list[str]] = defaultdict(list)
_failed: list[str] = []
_seconds: Counter[str] = Counter()  # time per test function, for sizing the CI selection


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        function = getattr(item, "originalname", item.name)
        reason = INAPPLICABLE.get(function)
        if reason is None and NON_IDENTITY in item.name:
            reason = INAPPLICABLE_NON_IDENTITY.get(function)
        if reason is not None:
            item.add_marker(pytest.mark.skip(reason=f"inapplicable: {reason}"))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    _seconds[report.nodeid.split("::")[-1].split("[")[0]] += report.duration
    if report.when == "call" and report.passed:
        _outcomes["passed"] += 1
    elif report.failed:
        _outcomes["failed"] += 1
        _failed.append(report.nodeid)
    elif report.skipped:
        reason = str(report.longrepr[2]) if isinstance(report.longrepr, tuple) else str(report.longrepr)
        reason = reason.removeprefix("Skipped: ")
        kind = "inapplicable" if reason.startswith("inapplicable: ") else "skipped by PEFT"
        _outcomes[kind] += 1
        _reasons[f"{kind}: {reason.removeprefix('inapplicable: ')}"].append(report.nodeid.split("::")[-1])


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    write = terminalreporter.write_line
    write("")
    write(
        "PEFT matrix (our rows): "
        + ", ".join(f"{k} {_outcomes[k]}" for k in ("passed", "failed", "inapplicable", "skipped by PEFT"))
    )
    for reason, tests in sorted(_reasons.items()):
        names = sorted({t.split("[")[0] for t in tests})
        write(f"  {len(tests):4d} × {reason}  ({', '.join(names)})")
    if os.environ.get("PEFT_MATRIX_TIMES"):
        for function, seconds in _seconds.most_common():
            write(f"  {seconds:7.1f} s  {function}")
    for nodeid in _failed:
        write(f"  FAILED {nodeid}")
    summary = os.environ.get("PEFT_MATRIX_SUMMARY")
    if summary:
        with open(summary, "w") as fh:
            json.dump(
                {"outcomes": dict(_outcomes), "reasons": {k: len(v) for k, v in _reasons.items()}, "failed": _failed},
                fh,
                indent=2,
            )
