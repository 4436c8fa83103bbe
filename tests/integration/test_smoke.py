import httpx
import pytest

from tests.conftest import EXAMPLES


@pytest.mark.stateroom(config=str(EXAMPLES / "counter" / "stateroom.toml"), workers=2)
async def test_counter_through_default_and_rpc(stateroom_runtime):
    rt = stateroom_runtime
    async with httpx.AsyncClient(base_url=rt.url) as http:
        assert (await http.get("/alice")).text == "1"
        assert (await http.get("/alice")).text == "2"
    stub = rt.namespace("COUNTER").get_by_name("alice")
    assert await stub.increment(5) == 7
