from typing import Any

from conftest import member_client


def test_it_registers_and_heartbeats(register: Any) -> None:
    answer = register()
    response = member_client(answer["token"]).post("/api/v1/members/heartbeat/")
    assert response.status_code == 200, response.content
    assert response.json()["instance_id"] == answer["instance_id"]
