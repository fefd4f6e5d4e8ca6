"""Wire compatibility: the official Huawei Cloud Python SDK for Auto Scaling (huaweicloudsdkas) against
elb-sim's lifecycle hooks.

Run by tests/sdk_compat.rs with ELB_SIM_ENDPOINT, ELB_SIM_AK, ELB_SIM_SK, ELB_SIM_PROJECT, ELB_SIM_GROUP,
ELB_SIM_INSTANCE and ELB_SIM_HOOK and ELB_SIM_LAUNCHING_HOOK set, after a scale-in of that instance has started (its terminating hook
HANGING). Reads the group's hooks and their types, lists the hanging hook, EXTENDs it by key, CONTINUEs it by instance and hook name, and checks that a
third answer comes back as the SDK's typed 400 AS.7042. Prints one summary line; exits non-zero on any
failure.
"""
import os
import sys

from huaweicloudsdkas.v1 import (
    AsClient, AttachCallbackInstanceLifeCycleHookRequest, CallbackLifeCycleHookOption,
    ListHookInstancesRequest, ListLifeCycleHooksRequest,
)
from huaweicloudsdkcore.auth.credentials import BasicCredentials
from huaweicloudsdkcore.exceptions import exceptions
from huaweicloudsdkcore.http.http_config import HttpConfig


def main():
    group = os.environ["ELB_SIM_GROUP"]
    instance = os.environ["ELB_SIM_INSTANCE"]
    hook = os.environ["ELB_SIM_HOOK"]
    config = HttpConfig.get_default_config()
    config.timeout = (5, 10)
    client = (
        AsClient.new_builder()
        .with_http_config(config)
        .with_credentials(BasicCredentials(os.environ["ELB_SIM_AK"], os.environ["ELB_SIM_SK"],
                                           os.environ["ELB_SIM_PROJECT"]))
        .with_endpoints([os.environ["ELB_SIM_ENDPOINT"]])
        .build()
    )
    calls = 0

    def hanging():
        nonlocal calls
        resp = client.list_hook_instances(ListHookInstancesRequest(scaling_group_id=group, instance_id=instance))
        calls += 1
        return resp.instance_hanging_info

    # The group's hooks and what each holds: how the agent tells a launching hook from a scale-in.
    group_hooks = client.list_life_cycle_hooks(ListLifeCycleHooksRequest(scaling_group_id=group))
    calls += 1
    kinds = {h.lifecycle_hook_name: h.lifecycle_hook_type for h in group_hooks.lifecycle_hooks}
    launching = os.environ["ELB_SIM_LAUNCHING_HOOK"]
    assert kinds == {hook: "INSTANCE_TERMINATING", launching: "INSTANCE_LAUNCHING"}, kinds
    assert all(h.default_result == "ABANDON" and h.default_timeout > 0 for h in group_hooks.lifecycle_hooks)

    infos = hanging()
    assert len(infos) == 1, infos
    info = infos[0]
    assert info.instance_id == instance and info.scaling_group_id == group, info
    assert info.lifecycle_hook_name == hook and info.lifecycle_hook_status == "HANGING", info
    assert info.default_result == "ABANDON" and info.timeout, info
    first_timeout = info.timeout

    def callback(result, **which):
        nonlocal calls
        body = CallbackLifeCycleHookOption(lifecycle_action_result=result, **which)
        client.attach_callback_instance_life_cycle_hook(
            AttachCallbackInstanceLifeCycleHookRequest(scaling_group_id=group, body=body))
        calls += 1

    # A heartbeat by key: the deadline moves.
    callback("EXTEND", lifecycle_action_key=info.lifecycle_action_key)
    extended = hanging()[0]
    assert extended.lifecycle_hook_status == "HANGING" and extended.timeout > first_timeout, (extended, first_timeout)

    # The answer, by instance and hook name.
    callback("CONTINUE", instance_id=instance, lifecycle_hook_name=hook)
    assert hanging()[0].lifecycle_hook_status == "CONTINUE"

    # Too late: the SDK's typed error carrying AS's code.
    try:
        callback("ABANDON", lifecycle_action_key=info.lifecycle_action_key)
        raise AssertionError("a callback on a finished hook succeeded")
    except exceptions.ClientRequestException as e:
        calls += 1
        assert e.status_code == 400 and e.error_code == "AS.7042", (e.status_code, e.error_code, e.error_msg)
        code = e.error_code

    print(f"AS SDK compat ok: {calls} calls, hook types read, EXTEND moved the deadline, CONTINUE, 400 {code}")


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # noqa: BLE001 - report any failure as one line and a non-zero exit
        print(f"AS SDK compat FAILED: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
