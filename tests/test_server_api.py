"""SGLang's client paths against the extension's policies (cacheopt, accelgen, cacheopt+accelgen), one real CPU
server per policy for the module: an ``sgl.function`` program (``run`` and ``run_batch``) carrying per-request SLOs
through :class:`sglang_ext.frontend.SLOEndpoint`, the real ``openai`` client for completions, chat and streaming
with SLOs in ``extra_body``, and a bad SLO on each path refused by the server with the field named. A bad SLO that
comes back as HTTP 400 shows the value reached ``SamplingParams.custom_params``, which is what the scheduler's
adapter reads (``translate.request_slo``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from eval.server import ServerProcess, cpu_server_args

pytestmark = pytest.mark.server

POLICIES = ["cacheopt", "accelgen", "cacheopt+accelgen"]
SLO = {"ttft_slo_ms": 5000.0, "tbt_slo_ms": 250.0}


@pytest.fixture(scope="module", params=POLICIES)
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("api") / f"server-{request.param.replace('+', '-')}.log"
    extra = ["--ext-policy", request.param, "--ext-predictor-mode", "online", "--ext-default-tbt-slo-ms", "300"]
    with ServerProcess(cpu_server_args(pool_tokens=1024, extra=extra), log_path=log) as srv:
        yield srv


@pytest.fixture
def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url + "/v1", api_key="none", timeout=120, max_retries=0)


def _program():  # type: ignore[no-untyped-def]
    import sglang as sgl

    @sgl.function
    def two_turns(s, topic):  # type: ignore[no-untyped-def]
        s += "Write about " + topic + ": "
        s += sgl.gen("first", max_tokens=6, min_tokens=6)
        s += " and then "
        s += sgl.gen("second", max_tokens=4, min_tokens=4)

    return two_turns


def test_frontend_run_and_run_batch_with_slos(server: ServerProcess) -> None:
    from sglang_ext.frontend import SLOEndpoint

    ep = SLOEndpoint(server.base_url, **SLO)
    prog = _program()
    state = prog.run(topic="KV caches", backend=ep, temperature=0)
    assert state.error() is None, state.error()
    assert state["first"] and state["second"] and "and then" in state.text()
    states = prog.run_batch([{"topic": t} for t in ("queues", "chunks", "SLOs")], backend=ep, temperature=0)
    assert [s.error() for s in states] == [None] * 3
    assert all(s["second"] for s in states)


@pytest.mark.filterwarnings("ignore:Error in stream_executor")  # SGLang's frontend warns, then records the error
def test_frontend_bad_slo_reaches_the_server_and_is_refused(server: ServerProcess) -> None:
    from sglang_ext.frontend import SLOEndpoint

    state = _program().run(topic="x", backend=SLOEndpoint(server.base_url, tbt_slo_ms=-5))
    assert state.error() is not None and "tbt_slo_ms" in str(state.error())


def test_openai_completions_with_slos(client: openai.OpenAI) -> None:
    r = client.completions.create(model="default", prompt="Once upon a time", max_tokens=6,
                                  extra_body={"min_tokens": 6, "custom_params": SLO})  # fmt: skip
    assert r.usage is not None and r.usage.completion_tokens == 6
    assert r.choices[0].finish_reason == "length"


def test_openai_chat_with_slos(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model="default",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is a KV cache?"}],
        max_tokens=5,
        extra_body={"min_tokens": 5, "custom_params": SLO},
    )
    assert r.usage is not None and r.usage.completion_tokens == 5
    assert r.usage.prompt_tokens > 10  # the chat template wrapped both messages
    assert r.choices[0].message.role == "assistant" and r.choices[0].message.content


@pytest.mark.parametrize("kind", ["completions", "chat"])
def test_openai_streaming_with_slos(client: openai.OpenAI, kind: str) -> None:
    body = {"min_tokens": 8, "custom_params": SLO}
    if kind == "chat":
        stream = client.chat.completions.create(model="default", messages=[{"role": "user", "content": "Hi"}],
                                                max_tokens=8, stream=True, extra_body=body)  # fmt: skip
        texts = [c.choices[0].delta.content or "" for c in stream if c.choices]
    else:
        stream = client.completions.create(model="default", prompt="Hi", max_tokens=8, stream=True, extra_body=body)
        texts = [c.choices[0].text for c in stream if c.choices]
    assert sum(1 for t in texts if t) >= 2  # arrived in pieces, not one final body
    assert "".join(texts)


@pytest.mark.parametrize("bad", [-5, 0, "fast"])
def test_openai_bad_slo_is_a_400_naming_the_field(client: openai.OpenAI, bad: object) -> None:
    with pytest.raises(openai.BadRequestError, match="tbt_slo_ms"):
        client.completions.create(model="default", prompt="hi", max_tokens=2,
                                  extra_body={"custom_params": {"tbt_slo_ms": bad}})  # fmt: skip
    with pytest.raises(openai.BadRequestError, match="ttft_slo_ms"):
        client.chat.completions.create(model="default", messages=[{"role": "user", "content": "hi"}], max_tokens=2,
                                       extra_body={"custom_params": {"ttft_slo_ms": bad}})  # fmt: skip


def test_the_policy_ran_in_the_scheduler_without_errors(server: ServerProcess) -> None:
    policy = server.args[server.args.index("--ext-policy") + 1]
    log = Path(server.log_path).read_text(errors="replace")
    assert f"policy={policy}" in log and "sglang_ext: adapter active in scheduler pid=" in log
    assert "Traceback" not in log
