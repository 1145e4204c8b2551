"""Sandbox.list: metadata filters (double-encoded on the wire, spec §2.4), state
filter, order, and X-Next-Token pagination. Three VMs."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor

from e2b import Sandbox, SandboxQuery, SandboxState

from helpers import list_sdk

ODD = "a b&c=d%e/f"  # survives the double percent-encoding only if decoded right


def test_list_filters_and_pagination(appliance, sandboxes) -> None:
    tag = uuid.uuid4().hex[:12]

    def create(i: int) -> Sandbox:
        meta = {"list": tag, "idx": str(i)}
        if i == 0:
            meta["odd"] = ODD
        return sandboxes.create(timeout=300, metadata=meta)

    with ThreadPoolExecutor(max_workers=3) as pool:
        created = list(pool.map(create, range(3)))
    ids = {s.sandbox_id for s in created}
    assert len(ids) == 3

    # Pagination through the SDK's paginator: 2, then 1, then done.
    pager = Sandbox.list(query=SandboxQuery(metadata={"list": tag}), limit=2)
    assert pager.has_next
    page1 = pager.next_items()
    assert len(page1) == 2, [s.sandbox_id for s in page1]
    assert pager.has_next and pager.next_token
    page2 = pager.next_items()
    assert len(page2) == 1, [s.sandbox_id for s in page2]
    assert not pager.has_next
    got = [s.sandbox_id for s in page1 + page2]
    assert sorted(got) == sorted(ids), "pages must not repeat or drop sandboxes"
    # Default order: newest first, across pages.
    started = [s.started_at for s in page1 + page2]
    assert started == sorted(started, reverse=True), started
    for s in page1 + page2:
        assert s.state == SandboxState.RUNNING
        assert s.metadata["list"] == tag

    asc = list_sdk(SandboxQuery(metadata={"list": tag}), order="asc")
    assert [s.started_at for s in asc] == sorted(started)

    # Every metadata pair must match; odd characters round-trip.
    one = list_sdk(SandboxQuery(metadata={"list": tag, "idx": "1"}))
    assert [s.sandbox_id for s in one] == [created[1].sandbox_id]
    odd = list_sdk(SandboxQuery(metadata={"list": tag, "odd": ODD}))
    assert [s.sandbox_id for s in odd] == [created[0].sandbox_id]
    assert odd[0].metadata["odd"] == ODD
    assert list_sdk(SandboxQuery(metadata={"list": tag, "idx": "7"})) == []

    # State filter: none of them is paused.
    assert list_sdk(SandboxQuery(metadata={"list": tag}, state=[SandboxState.PAUSED])) == []
    both = list_sdk(SandboxQuery(metadata={"list": tag},
                                 state=[SandboxState.RUNNING, SandboxState.PAUSED]))
    assert {s.sandbox_id for s in both} == ids

    # The raw wire: X-Next-Token header, echoed back as nextToken.
    # (The SDK's metadata value for {"list": tag} is the string "list=<tag>".)
    res = appliance.api("GET", "/v2/sandboxes", query={"metadata": f"list={tag}", "limit": 2})
    assert res.status == 200 and len(res.json()) == 2, res
    token = res.headers.get("X-Next-Token")
    assert token, f"no X-Next-Token with more to come: {dict(res.headers)}"
    res = appliance.api("GET", "/v2/sandboxes", query={"metadata": f"list={tag}", "limit": 2,
                                                       "nextToken": token})
    assert res.status == 200 and len(res.json()) == 1, res
    assert not res.headers.get("X-Next-Token")

    with ThreadPoolExecutor(max_workers=3) as pool:
        assert all(pool.map(lambda s: s.kill(), created))
    assert list_sdk(SandboxQuery(metadata={"list": tag})) == []
