"""Wire compatibility: the official Huawei Cloud Python SDK (huaweicloudsdkelb) against elb-sim.

Run by tests/sdk_compat.rs with ELB_SIM_ENDPOINT, ELB_SIM_AK, ELB_SIM_SK, ELB_SIM_PROJECT,
ELB_SIM_POOL, ELB_SIM_INSTANCE (an instance whose address is 10.0.0.9) and ELB_SIM_TEMP_AK/SK/TOKEN (a
temporary key from elb-sim's metadata service) set. Signs every request with AK/SK (the SDK's default),
and checks that each call succeeds and its response parses into the SDK's models, and that refusals
come back as the SDK's typed errors. Prints one summary line; exits non-zero on any failure.
"""
import os
import sys

from huaweicloudsdkcore.auth.credentials import BasicCredentials
from huaweicloudsdkcore.exceptions import exceptions
from huaweicloudsdkcore.http.http_config import HttpConfig
from huaweicloudsdkelb.v3 import (
    BatchDeleteMembersOption, BatchDeleteMembersRequest, BatchDeleteMembersRequestBody,
    CreateMemberOption, CreateMemberRequest, CreateMemberRequestBody, DeleteMemberRequest,
    ElbClient, ListAllMembersRequest, ListMembersRequest, ListPoolsRequest, ShowMemberRequest,
    ShowPoolRequest, UpdateMemberOption, UpdateMemberRequest, UpdateMemberRequestBody,
)


def client_for(credentials):
    config = HttpConfig.get_default_config()
    config.timeout = (5, 10)
    return (
        ElbClient.new_builder()
        .with_http_config(config)
        .with_credentials(credentials)
        .with_endpoints([os.environ["ELB_SIM_ENDPOINT"]])
        .build()
    )


def main():
    pool = os.environ["ELB_SIM_POOL"]
    project = os.environ["ELB_SIM_PROJECT"]
    instance = os.environ["ELB_SIM_INSTANCE"]
    client = client_for(BasicCredentials(os.environ["ELB_SIM_AK"], os.environ["ELB_SIM_SK"], project))
    calls = 0

    created = []
    for port in (9001, 9002, 9003):
        body = CreateMemberRequestBody(member=CreateMemberOption(address="10.0.0.9", protocol_port=port, weight=5))
        resp = client.create_member(CreateMemberRequest(pool_id=pool, body=body))
        calls += 1
        assert resp.member.id and resp.member.protocol_port == port, resp
        assert resp.member.address == "10.0.0.9" and resp.member.weight == 5, resp
        created.append(resp.member.id)

    # Paging: two per page until no next_marker.
    seen, marker, pages = [], None, 0
    while True:
        resp = client.list_members(ListMembersRequest(pool_id=pool, limit=2, marker=marker, address=["10.0.0.9"]))
        calls += 1
        pages += 1
        seen += [m.id for m in resp.members]
        marker = resp.page_info.next_marker
        if not marker:
            break
    assert sorted(seen) == sorted(created), (seen, created)
    assert pages == 2, pages

    resp = client.show_member(ShowMemberRequest(pool_id=pool, member_id=created[0]))
    calls += 1
    assert resp.member.id == created[0] and resp.member.operating_status, resp

    body = UpdateMemberRequestBody(member=UpdateMemberOption(weight=0))
    resp = client.update_member(UpdateMemberRequest(pool_id=pool, member_id=created[0], body=body))
    calls += 1
    assert resp.member.weight == 0, resp

    resp = client.show_pool(ShowPoolRequest(pool_id=pool))
    calls += 1
    assert resp.pool.id == pool and resp.pool.connection_drain is not None, resp
    drain = resp.pool.connection_drain
    assert drain.enable is True and drain.timeout == 30, drain
    assert resp.pool.member_deletion_protection_enable is False, resp
    assert sorted(m.id for m in resp.pool.members) == sorted(created), resp.pool.members

    resp = client.list_pools(ListPoolsRequest(member_address=["10.0.0.9"]))
    calls += 1
    assert [p.id for p in resp.pools] == [pool], resp

    # The address belongs to an instance: members carry its id, and ListMembers filters on it.
    # A repeated numeric filter: the SDK signs its values sorted as numbers (9001 before 10000), which
    # is not their order as strings; the simulator must accept that signature as the real service does.
    resp = client.list_members(ListMembersRequest(pool_id=pool, protocol_port=[9003, 10000, 9001]))
    calls += 1
    assert sorted(m.protocol_port for m in resp.members) == [9001, 9003], resp

    resp = client.list_members(ListMembersRequest(pool_id=pool, instance_id=[instance]))
    calls += 1
    assert sorted(m.id for m in resp.members) == sorted(created), resp
    assert all(m.member_type == "instance" and m.instance_id == instance for m in resp.members), resp

    # ListAllMembers: its own filters (pool_id), and no pool_id in its answer.
    resp = client.list_all_members(ListAllMembersRequest(pool_id=[pool], address=["10.0.0.9"], limit=10))
    calls += 1
    assert sorted(m.id for m in resp.members) == sorted(created), resp
    assert all(m.pool_id is None for m in resp.members), resp
    assert resp.page_info.current_count == 3 and resp.page_info.next_marker is None, resp.page_info

    # A temporary key from the metadata service, with its security token (signed by the SDK).
    temp = BasicCredentials(os.environ["ELB_SIM_TEMP_AK"], os.environ["ELB_SIM_TEMP_SK"], project)
    temp = temp.with_security_token(os.environ["ELB_SIM_TEMP_TOKEN"])
    resp = client_for(temp).show_member(ShowMemberRequest(pool_id=pool, member_id=created[1]))
    calls += 1
    assert resp.member.id == created[1], resp

    # A wrong secret key: the SDK's typed 401 with the gateway's code.
    wrong = client_for(BasicCredentials(os.environ["ELB_SIM_AK"], "not-the-secret", project))
    try:
        wrong.show_pool(ShowPoolRequest(pool_id=pool))
        raise AssertionError("a wrong SK was accepted")
    except exceptions.ClientRequestException as e:
        calls += 1
        assert e.status_code == 401 and e.error_code == "APIGW.0301", (e.status_code, e.error_code)
        refused = e.error_code

    # BatchDeleteMembers: the last created member and one that does not exist.
    body = BatchDeleteMembersRequestBody(members=[
        BatchDeleteMembersOption(id=created[2]),
        BatchDeleteMembersOption(id="00000000-0000-4000-8000-00000000dead"),
    ])
    resp = client.batch_delete_members(BatchDeleteMembersRequest(pool_id=pool, body=body))
    calls += 1
    batch = [m.ret_status for m in resp.members]
    assert batch == ["successful", "not found"], resp
    assert resp.members[0].id == created[2], resp

    for member in created[:2]:
        client.delete_member(DeleteMemberRequest(pool_id=pool, member_id=member))
        calls += 1

    # A second delete: the SDK raises a typed error carrying the API's code.
    try:
        client.delete_member(DeleteMemberRequest(pool_id=pool, member_id=created[0]))
        raise AssertionError("deleting a deleted member succeeded")
    except exceptions.ClientRequestException as e:
        calls += 1
        assert e.status_code == 404 and e.error_code == "ELB.8904", (e.status_code, e.error_code, e.error_msg)
        assert created[0] in e.error_msg and e.request_id, e.error_msg
        code = e.error_code

    print(f"SDK compat ok: {calls} calls, {pages} pages, 404 {code}, 401 {refused}, batch {'/'.join(batch)}")


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # noqa: BLE001 - report any failure as one line and a non-zero exit
        print(f"SDK compat FAILED: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
