"""Eight sandboxes created at once, each running its own command, then all
killed at once. Eight VMs."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

from e2b import Sandbox, SandboxQuery, SandboxState

from helpers import list_sdk

COUNT = 8


def test_parallel_create_run_kill(appliance, sandboxes) -> None:
    tag = uuid.uuid4().hex[:12]

    def one(i: int) -> tuple[str, str]:
        sbx = sandboxes.create(timeout=300, metadata={"par": tag, "i": str(i)},
                               envs={"I": str(i)})
        out = sbx.commands.run("echo $I")
        assert out.exit_code == 0, out
        return sbx.sandbox_id, out.stdout.strip()

    with ThreadPoolExecutor(max_workers=COUNT) as pool:
        results = list(pool.map(one, range(COUNT)))

    assert [out for _, out in results] == [str(i) for i in range(COUNT)]
    ids = [sid for sid, _ in results]
    assert len(set(ids)) == COUNT, ids

    listed = list_sdk(SandboxQuery(metadata={"par": tag}))
    assert sorted(s.sandbox_id for s in listed) == sorted(ids)
    assert all(s.state == SandboxState.RUNNING for s in listed)
    by_id = {s.sandbox_id: s.metadata["i"] for s in listed}
    assert [by_id[sid] for sid in ids] == [str(i) for i in range(COUNT)]

    with ThreadPoolExecutor(max_workers=COUNT) as pool:
        killed = list(pool.map(Sandbox.kill, ids))
    assert killed == [True] * COUNT
    assert list_sdk(SandboxQuery(metadata={"par": tag})) == []
