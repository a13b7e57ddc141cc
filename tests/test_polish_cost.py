"""`gcpdl cost` fits 80 columns and shows the running price exactly as `status` does (issue 10 §3, §6)."""

from __future__ import annotations

import re

from gcpdl import pricing
from tests.helpers import run
from tests.test_money import fleet  # noqa: F401  (the same VMs and kept disk as the money tests)


def test_cost_table_fits_80_columns_and_prices_like_status(fleet):  # noqa: F811
    result = run("cost")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines), "\n" + result.stdout
    assert lines[0].split() == ["NAME", "STATE", "ZONE", "RAN", "PRICE", "DISKS", "SPENT"]
    shown = f"${pricing.hourly_price('n1-standard-8', 't4', 1, 'us-central1').running:.2f}/h"
    status_alpha = next(line for line in run("status").stdout.splitlines() if line.startswith("alpha "))
    cost_alpha = next(line for line in lines if line.startswith("alpha "))
    assert shown in status_alpha.split() and shown in cost_alpha.split(), (status_alpha, cost_alpha)
    assert re.search(r"\$\d+\.\d\d/mo", cost_alpha), cost_alpha
