"""The shared Redis link: masked URLs and bounded calls that fail as RegistryUnavailable."""

from __future__ import annotations

import time

import pytest

from tests.harness import free_port
from voicemesh.errors import RegistryUnavailable
from voicemesh.redis_link import RedisLink, display_url

pytestmark = pytest.mark.unit


def test_the_password_is_masked_and_nothing_else_changes() -> None:
    assert display_url("redis://:s3cret@redis:6379/0") == "redis://***@redis:6379/0"
    assert display_url("redis://app:s3cret@10.0.0.5/2") == "redis://***@10.0.0.5/2"
    assert display_url("redis://127.0.0.1:6390/0") == "redis://127.0.0.1:6390/0"


async def test_a_call_to_a_redis_that_is_not_there_fails_fast_and_says_so() -> None:
    link = RedisLink("session store", f"redis://:s3cret@127.0.0.1:{free_port()}/0", timeout_s=0.2)
    began = time.monotonic()
    with pytest.raises(RegistryUnavailable) as caught:
        await link.call("write of the record", link.redis.ping())
    assert time.monotonic() - began < 2.0  # one quick retry, not redis-py's default backoff
    message = str(caught.value)
    assert message.startswith("session store at redis://***@127.0.0.1:"), message
    assert "during write of the record" in message
    assert "s3cret" not in message
    await link.redis.aclose()
