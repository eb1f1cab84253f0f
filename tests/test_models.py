"""The model layer against a real HTTP server on loopback: retries, Retry-After,
timeouts, malformed bodies, the limiter, the cache, the ledger, credentials, specs."""

from __future__ import annotations

import asyncio
import time

import pytest

from mmsafe.models import (AdaptiveLimiter, ConfigError, CostLedger, FatalProviderError, ModelClient,
                           ResponseCache, build_provider, resolve_endpoint)
from mmsafe.models.engine import BudgetExceeded, request_log
from mmsafe.types import ImagePart, Message, TextPart


def client_for(llm, model, *, cache=None, ledger=None, **kw):
    cfg = resolve_endpoint(f"openai/{model}@{llm.url}", "target", **kw)
    return ModelClient(build_provider(cfg), "target", ledger or CostLedger(), cache=cache)


async def one(client, text="hello", **kw):
    await client.start()
    try:
        return await client.chat([Message(role="user", content=text)], **kw)
    finally:
        await client.close()


def test_plain_reply_and_usage(llm):
    res = asyncio.run(one(client_for(llm, "comply")))
    assert res.ok and res.text.startswith("Sure")
    assert res.input_tokens > 0 and res.output_tokens > 0 and res.attempts == 1


def test_429_is_retried_and_retry_after_honoured(llm):
    c = client_for(llm, "flaky429-2", backoff_base_s=0.001)
    t0 = time.perf_counter()
    res = asyncio.run(one(c))
    assert res.ok and res.attempts == 3
    assert time.perf_counter() - t0 >= 0.1  # two Retry-After: 0.05 waits
    assert c.limiter.overloads == 2
    rows = request_log(res, "target", "s1", "m")
    assert [r["status"] for r in rows] == ["error", "error", "ok"]
    assert rows[0]["http_status"] == 429


def test_500_retried_then_ok(llm):
    res = asyncio.run(one(client_for(llm, "flaky500-1", backoff_base_s=0.001)))
    assert res.ok and res.attempts == 2


def test_malformed_body_becomes_error_after_retries(llm):
    res = asyncio.run(one(client_for(llm, "malformed", backoff_base_s=0.001, max_retries=2)))
    assert not res.ok and "malformed" in res.error and res.attempts == 3
    assert llm.count("malformed") == 3


def test_hanging_endpoint_times_out(llm):
    t0 = time.perf_counter()
    res = asyncio.run(one(client_for(llm, "hang", timeout_s=0.2, max_retries=1, backoff_base_s=0.001)))
    assert not res.ok and "timed out" in res.error
    assert time.perf_counter() - t0 < 3


def test_unknown_model_is_fatal(llm):
    with pytest.raises(FatalProviderError, match="404"):
        asyncio.run(one(client_for(llm, "no-such-model")))


def test_bad_key_is_fatal_and_names_env_var(llm, monkeypatch):
    llm.require_key = "right-key"
    monkeypatch.setenv("MY_KEY", "wrong-key")
    with pytest.raises(FatalProviderError, match=r"MY_KEY"):
        asyncio.run(one(client_for(llm, "comply", api_key_env="MY_KEY")))
    monkeypatch.setenv("MY_KEY", "right-key")
    assert asyncio.run(one(client_for(llm, "comply", api_key_env="MY_KEY"))).ok
    assert llm.headers[-1]["Authorization"] == "Bearer right-key"


def test_missing_key_names_env_var(monkeypatch):
    cfg = resolve_endpoint("openai/gpt-4o-mini", "target")
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        asyncio.run(build_provider(cfg).start())
    cfg = resolve_endpoint("openai/x@http://127.0.0.1:9/v1", "target", api_key_env="VLLM_KEY")
    with pytest.raises(ConfigError, match="VLLM_KEY"):
        asyncio.run(build_provider(cfg).start())


def test_openai_base_url_env_is_honoured(llm, monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", llm.url)
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    cfg = resolve_endpoint("openai/comply", "target")
    c = ModelClient(build_provider(cfg), "target", CostLedger())
    assert asyncio.run(one(c)).ok
    assert llm.headers[-1]["Authorization"] == "Bearer k"


def test_cache_hits_skip_the_network_and_errors_are_not_cached(llm, tmp_path):
    cache = ResponseCache(tmp_path / "c.sqlite")
    a = asyncio.run(one(client_for(llm, "comply", cache=cache)))
    b = asyncio.run(one(client_for(llm, "comply", cache=cache)))
    assert a.ok and b.cached and b.text == a.text
    assert llm.count("comply") == 1
    # other settings -> other key
    asyncio.run(one(client_for(llm, "comply", cache=cache, params={"temperature": 0.7})))
    assert llm.count("comply") == 2
    # errors are never cached
    asyncio.run(one(client_for(llm, "malformed", cache=cache, max_retries=0)))
    asyncio.run(one(client_for(llm, "malformed", cache=cache, max_retries=0)))
    assert llm.count("malformed") == 2


def test_cache_key_uses_image_hash_and_epoch(llm, tmp_path):
    from mmsafe.models.engine import cache_key
    ident = {"provider": "openai", "model": "m"}
    m1 = [Message(role="user", content=[ImagePart(path="a.png", sha256="1" * 64), TextPart(text="x")])]
    m2 = [Message(role="user", content=[ImagePart(path="a.png", sha256="2" * 64), TextPart(text="x")])]
    assert cache_key(ident, {}, m1, tmp_path, None, 0) != cache_key(ident, {}, m2, tmp_path, None, 0)
    assert cache_key(ident, {}, m1, tmp_path, None, 0) != cache_key(ident, {}, m1, tmp_path, None, 1)
    assert cache_key(ident, {}, m1, tmp_path, None, 0) == cache_key(ident, {}, m1, tmp_path, None, 0)


def test_cached_reply_for_an_image_edited_in_place_is_refused_like_a_send(llm, tmp_path):
    """The cache key uses the benchmark's sha256; a file changed since then must not get the
    old image's cached reply (a send would refuse it): AssetError naming the file either way."""
    import hashlib

    from mmsafe.types import AssetError
    data = b"\x89PNG\r\n\x1a\n" + b"cached" * 30
    (tmp_path / "img.png").write_bytes(data)
    msgs = [Message(role="user", content=[ImagePart(path="img.png", sha256=hashlib.sha256(data).hexdigest()),
                                          TextPart(text="what is shown?")])]
    cache = ResponseCache(tmp_path / "c.sqlite")

    async def send():
        c = client_for(llm, "comply", cache=cache)
        await c.start()
        try:
            return await c.chat(msgs, root=tmp_path)
        finally:
            await c.close()
    assert asyncio.run(send()).ok
    again = asyncio.run(send())
    assert again.cached and llm.count("comply") == 1  # unchanged file: served from the cache
    (tmp_path / "img.png").write_bytes(data + b"edited")
    with pytest.raises(AssetError, match="img.png: sha256 does not match"):
        asyncio.run(send())
    assert llm.count("comply") == 1


def test_cache_expiry(tmp_path):
    from mmsafe.models import ChatResult
    cache = ResponseCache(tmp_path / "c.sqlite", ttl_s=-1)
    cache.put("k", ChatResult(text="x"))
    assert cache.get("k") is None


def test_ledger_prices_and_budget(llm):
    ledger = CostLedger()
    c = client_for(llm, "comply", ledger=ledger, price={"input": 1_000_000.0, "output": 0.0})
    res = asyncio.run(one(c))
    assert res.cost_usd == pytest.approx(res.input_tokens * 1.0)
    assert ledger.roles["target"].cost_usd == pytest.approx(res.cost_usd)
    # a budget is a ceiling: a request whose worst case does not fit is not sent at all
    ledger.max_cost_usd = ledger.total_cost + 1e-9
    n = llm.count()
    with pytest.raises(BudgetExceeded):
        asyncio.run(one(client_for(llm, "comply", ledger=ledger, price={"input": 1_000_000.0, "output": 0.0})))
    assert llm.count() == n and ledger.total_cost <= ledger.max_cost_usd


def test_images_are_sent_as_data_urls(llm, tmp_path):
    from conftest import make_png
    (tmp_path / "a.png").write_bytes(make_png())
    msgs = [Message(role="user", content=[ImagePart(path="a.png", mime="image/png"), TextPart(text="what")]),
            Message(role="assistant", content="bland"), Message(role="user", content="and then?")]
    c = client_for(llm, "echo")

    async def go():
        await c.start()
        try:
            return await c.chat(msgs, root=tmp_path, system="policy")
        finally:
            await c.close()

    res = asyncio.run(go())
    assert "roles=system,user,assistant,user" in res.text and "images=1" in res.text
    sent = llm.requests[-1]["messages"][1]["content"][0]
    assert sent["type"] == "image_url" and sent["image_url"]["url"].startswith("data:image/png;base64,")


def test_limiter_aimd():
    async def go():
        lim = AdaptiveLimiter(cap=16, initial=4, cooldown_s=10)
        for _ in range(4):
            await lim.acquire()
        assert lim.in_flight == 4
        lim.release(ok=True)  # saturated + healthy -> grows
        assert lim.limit == 5
        lim.release(overload=True)
        assert lim.limit == 2.5
        lim.release(overload=True)  # within cooldown: one burst counts once
        assert lim.limit == 2.5
        # waiters are served as slots free up, never above the limit
        lim.release(ok=True)
        assert lim.in_flight == 0
        await lim.acquire()
        await lim.acquire()
        waiter = asyncio.ensure_future(lim.acquire())
        await asyncio.sleep(0)
        assert not waiter.done()
        lim.release(ok=True)
        await asyncio.sleep(0)
        assert waiter.done()
    asyncio.run(go())


def test_limiter_respects_cap_under_load(llm):
    llm.latency_ms = 20
    c = client_for(llm, "comply", max_connections=8)
    peak = 0

    async def go():
        await c.start()

        async def req(i):
            nonlocal peak
            r = await c.chat([Message(role="user", content=f"q{i}")])
            peak = max(peak, int(c.limiter.limit), c.limiter.in_flight)
            return r
        rs = await asyncio.gather(*(req(i) for i in range(80)))
        await c.close()
        return rs

    rs = asyncio.run(go())
    assert all(r.ok for r in rs)
    assert peak <= 8 and c.limiter.limit == 8  # grew to the cap, never beyond


def test_spec_parsing_and_errors(tmp_path):
    cfg = resolve_endpoint("openai/meta-llama/Llama-3-8B@http://127.0.0.1:8000/v1", "target")
    assert cfg.provider == "openai" and cfg.model == "meta-llama/Llama-3-8B"
    assert cfg.base_url == "http://127.0.0.1:8000/v1"
    with pytest.raises(ConfigError, match="unknown provider 'nope'"):
        resolve_endpoint("nope/x", "target")
    with pytest.raises(ConfigError, match="provider/model"):
        resolve_endpoint("gpt4", "target")
    with pytest.raises(ConfigError, match="unknown mock model"):
        build_provider(resolve_endpoint("mock/whatever", "target"))


def test_models_file(tmp_path, llm):
    f = tmp_path / "models.yaml"
    f.write_text(f"""
models:
  small:
    spec: openai/comply@{llm.url}
    roles: [target]
    max_connections: 3
    price: {{input: 2.0, output: 4.0}}
    capabilities: {{image: false}}
    params: {{temperature: 0}}
  bad:
    provider: openai
    model: x
    api_key: sk-do-not-put-keys-here
""")
    cfg = resolve_endpoint("small", "target", models_file=f)
    assert cfg.max_connections == 3 and cfg.price.input == 2.0 and not cfg.capabilities.image
    assert cfg.params == {"temperature": 0}
    with pytest.raises(ConfigError, match="not declared for role 'judge'"):
        resolve_endpoint("small", "judge", models_file=f)
    with pytest.raises(ConfigError, match=r"models\.bad\.api_key"):
        resolve_endpoint("bad", "target", models_file=f)
    (tmp_path / "broken.yaml").write_text("models:\n  a: [1,\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml:\d+"):
        resolve_endpoint("a", "target", models_file=tmp_path / "broken.yaml")


def test_mock_models_run_over_loopback():
    from mmsafe.models.mock import MOCK_TAG

    async def go(name):
        cfg = resolve_endpoint(name, "target")
        assert cfg.is_mock and "MOCK" in cfg.display
        c = ModelClient(build_provider(cfg), "target", CostLedger())
        await c.start()
        try:
            return await c.chat([Message(role="user", content="q")])
        finally:
            await c.close()

    assert "can't" in asyncio.run(go("mock/refuser")).text
    comp = asyncio.run(go("mock/complier")).text
    assert comp.startswith("Sure") and MOCK_TAG in comp
    assert "turns=1" in asyncio.run(go("mock/echo")).text


def test_resent_image_is_kept_encoded_and_checked_against_its_hash(tmp_path):
    """An image sent again (several targets, jurors, turns) is kept base64-encoded; a file
    that no longer matches the benchmark's sha256 is refused with its path, not sent."""
    import base64
    import hashlib

    from mmsafe.models import openai_compat as oc
    from mmsafe.types import AssetError

    data = b"\x89PNG\r\n\x1a\n" + b"pixels" * 50
    (tmp_path / "assets").mkdir()
    (tmp_path / "assets" / "a.png").write_bytes(data)
    part = ImagePart(path="assets/a.png", sha256=hashlib.sha256(data).hexdigest())
    msgs = [Message(role="user", content=[part, TextPart(text="what is shown?")])]
    first = oc.encode_openai_messages(msgs, tmp_path)
    url = first[0]["content"][0]["image_url"]["url"]
    assert url == "data:image/png;base64," + base64.b64encode(data).decode()
    assert oc.encode_openai_messages(msgs, tmp_path) == first  # second use: kept from now on
    (tmp_path / "assets" / "a.png").unlink()  # served from the content-addressed cache now
    assert oc.encode_openai_messages(msgs, tmp_path) == first

    (tmp_path / "assets" / "b.png").write_bytes(data + b"edited")
    stale = ImagePart(path="assets/b.png", sha256=hashlib.sha256(data).hexdigest())
    with pytest.raises(AssetError, match="assets/b.png: sha256 does not match"):
        oc.encode_openai_messages([Message(role="user", content=[stale])], tmp_path)


def test_image_just_written_is_sent_from_memory_and_must_match_its_hash(tmp_path):
    """The image agent hands the critic the bytes it has just stored: the first send needs no
    file read, and bytes that do not match the name's sha256 are refused."""
    import base64
    import hashlib

    from mmsafe.models import openai_compat as oc

    data = b"\x89PNG\r\n\x1a\n" + b"critic" * 40
    sha = hashlib.sha256(data).hexdigest()
    with pytest.raises(ValueError, match="do not match"):
        oc.remember_asset_b64(tmp_path, f"assets/{sha}.png", sha, data + b"x")
    oc.remember_asset_b64(tmp_path, f"assets/{sha}.png", sha, data)  # no file on disk at all
    msgs = [Message(role="user", content=[ImagePart(path=f"assets/{sha}.png", sha256=sha)])]
    url = oc.encode_openai_messages(msgs, tmp_path)[0]["content"][0]["image_url"]["url"]
    assert url == "data:image/png;base64," + base64.b64encode(data).decode()
