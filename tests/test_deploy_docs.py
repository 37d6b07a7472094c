"""docs/deployment.md keeps up with the Terraform configuration (issue 22 item 8): every account
Terraform creates and every role it grants is in the least-privilege table, and the runtime
section names the runtime the batches use."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "deployment.md").read_text()
MAIN = (ROOT / "deploy" / "terraform" / "main.tf").read_text()


def _table() -> str:
    start = DOC.index("## 10. Who may do what")
    return DOC[start : DOC.index("\n## ", start + 1)]


def test_every_account_is_in_the_least_privilege_table():
    accounts = set(re.findall(r'account_id\s*=\s*"([a-z0-9-]+)"', MAIN))
    assert accounts == {
        "dataproc-spark-sa",
        "poolcast-workflow",
        "poolcast-scheduler",
        "poolcast-build",
    }
    table = _table()
    for account in accounts:
        assert f"`{account}`" in table, account


def test_every_granted_role_and_custom_permission_is_in_the_table():
    roles = set(re.findall(r'role\s*=\s*"(roles/[\w.]+)"', MAIN))
    assert roles, "no roles found in main.tf"
    table = _table()
    for role in roles:
        assert f"`{role}`" in table, role
    permissions = re.search(r"permissions = \[(.*?)\]", MAIN, re.S)
    assert permissions
    for permission in re.findall(r'"([\w.]+)"', permissions.group(1)):
        assert f"`{permission}`" in table, permission


def test_runtime_section_names_the_runtime_and_its_end_of_support():
    from poolcast.deploy import batch_spec

    section = DOC[DOC.index("## 11. Runtime support") :]
    assert f"runtime **{batch_spec.RUNTIME_VERSION}**" in section
    assert (
        "2026-09-30" in section and "Scala 2.13" in section and "synapseml-lightgbm_2.13" in section
    )
