"""The LLM judge end to end: real HTTP to a local OpenAI-compatible server through the real ``openai``
client; caching by request hash, retries, malformed answers, a missing key, and the key's absence from
every file written."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace

try:  # openai 3 sends through httpx2, earlier releases through httpx
    import httpx2 as httpx
except ImportError:  # pragma: no cover
    import httpx
import numpy as np
import openai
import pandas as pd
import pytest

from kmap.core.provenance import read_provenance
from kmap.methods.ablation.judge import (
    JUDGE_COLUMNS,
    SCORE_KEYS,
    JudgeCache,
    JudgeFailure,
    JudgeSettings,
    build_request,
    classify,
    pairs_from_responses,
    parse_score,
    request_hash,
    run_judge,
    with_retries,
)
from kmap.methods.ablation.summary import summarise_verdicts
from tests.judge_server import JudgeServer, default_answer
from tests.workflow import ablation_summary_job, run_entry

REPO = Path(__file__).resolve().parents[1]
KEY_ENV = "KMAP_TEST_JUDGE_KEY"
KEY = "sk-test-0123456789abcdefSECRET"


def _responses() -> pd.DataFrame:
    """3 prompts × (intact + layers 0, 1); p2's layer-1 response is token-identical to its intact one."""
    rows = []
    for i in range(3):
        prompt = f"prompt {i} is a"
        rows.append(dict(prompt_id=f"p{i}", prompt=prompt, layer=-1, response=f"intact {i}", tokens=[i, 9]))
        rows.append(dict(prompt_id=f"p{i}", prompt=prompt, layer=0, response=f"gibberish {i}{i}", tokens=[7]))
        same = i == 2
        tokens = [i, 9] if same else [i, 8]
        rows.append(
            dict(
                prompt_id=f"p{i}",
                prompt=prompt,
                layer=1,
                response=f"intact {i}" if same else "x",
                tokens=tokens,
            )
        )
    return pd.DataFrame(rows)


def _settings(server: JudgeServer, **overrides: object) -> JudgeSettings:
    base = dict(
        base_url=server.base_url,
        model="judge-test",
        api_key_env=KEY_ENV,
        concurrency=2,
        timeout_s=10.0,
        max_retries=4,
        backoff_s=0.001,
        backoff_max_s=0.01,
    )
    return JudgeSettings(**{**base, **overrides})


def _expected_scores(settings: JudgeSettings, responses: pd.DataFrame) -> list[float]:
    """The server's score for each pair, computed here from the request the judge must send."""
    pairs = pairs_from_responses(responses)
    scores = []
    for row in pairs.itertuples():
        if row.identical:
            scores.append(1.0)
        else:
            request = build_request(settings, row.prompt, row.intact, row.ablated)
            scores.append(float(default_answer(request)))
    return scores


@pytest.mark.parametrize(
    ("text", "score"),
    [
        ("7", 7),
        (" 10\n", 10),
        ("Score: 3.", 3),
        ("8/10", 8),
        ("1", 1),
        ("0", None),
        ("11", None),
        ("7.5", None),
        ("between 6 and 7", None),
        ("-3", None),
        ("seven", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_score_never_guesses(text: str | None, score: int | None) -> None:
    assert parse_score(text) == score


def test_request_hash_covers_endpoint_and_content_only() -> None:
    settings = JudgeSettings()
    request = build_request(settings, "p {x}", "a", "b")
    assert "{x}" in request["messages"][1]["content"]  # braces in a prompt survive the template
    assert request_hash("http://h/v1", request) == request_hash("http://h/v1/", dict(reversed(request.items())))
    assert request_hash("http://h/v1", request) != request_hash("http://other/v1", request)
    assert request_hash("http://h/v1", request) != request_hash("http://h/v1", build_request(settings, "p", "a", "c"))


def test_settings_reject_unknown_keys_and_split_score_keys() -> None:
    with pytest.raises(ValueError, match="unknown setting"):
        JudgeSettings.from_dict({"modle": "gpt-4o"})
    settings = JudgeSettings.from_dict({"model": "m", "concurrency": 9})
    assert settings.score_settings()["model"] == "m" and "concurrency" not in settings.score_settings()
    assert set(settings.score_settings()) == set(SCORE_KEYS)


def _status_error(cls: type[openai.APIStatusError], status: int) -> openai.APIStatusError:
    response = httpx.Response(status, request=httpx.Request("POST", "http://127.0.0.1/v1/chat/completions"))
    return cls(f"message quoting {KEY}", response=response, body=None)


def test_classify_and_retry_reasons_never_quote_messages() -> None:
    assert classify(_status_error(openai.RateLimitError, 429)) == "retry"
    assert classify(_status_error(openai.InternalServerError, 503)) == "retry"
    assert classify(_status_error(openai.AuthenticationError, 401)) == "fatal"
    assert classify(_status_error(openai.BadRequestError, 400)) == "give_up"
    calls, sleeps = [], []

    def send() -> str:
        calls.append(1)
        raise _status_error(openai.RateLimitError, 429)

    with pytest.raises(JudgeFailure) as failure:
        with_retries(send, JudgeSettings(max_retries=3, backoff_s=1.0, backoff_max_s=3.0), sleeps.append)
    assert len(calls) == 4 and len(sleeps) == 3
    assert all(0.5 * min(2**i, 3.0) <= s <= min(2**i, 3.0) for i, s in enumerate(sleeps))  # capped, jittered
    assert failure.value.reason == "RateLimitError 429" and KEY not in str(failure.value)


def test_judge_scores_pairs_then_serves_rerun_from_cache(tmp_path: Path) -> None:
    responses = _responses()
    cache = tmp_path / "cache.jsonl"
    with JudgeServer() as server:
        settings = _settings(server)
        first = run_judge(responses, settings, cache, "m", "d", environ={KEY_ENV: KEY})
        assert server.n_requests == 5  # 6 pairs, one identical pair needs no call
        assert set(server.authorizations) == {f"Bearer {KEY}"}
        assert {body["temperature"] for body in server.bodies} == {0.0}
        table = first.table
        assert list(table.columns) == list(JUDGE_COLUMNS)
        assert table["score"].tolist() == _expected_scores(settings, responses)
        assert table["status"].value_counts().to_dict() == {"ok": 5, "identical": 1}
        assert not table["cached"].any()
        second = run_judge(responses, settings, cache, "m", "d", environ={KEY_ENV: KEY})
        assert server.n_requests == 5  # the server saw no second request
        assert second.requests_sent == 0
        assert second.table["cached"].sum() == 5
        assert second.table["score"].tolist() == table["score"].tolist()


def test_duplicate_requests_are_sent_once(tmp_path: Path) -> None:
    responses = _responses()
    responses.loc[responses["layer"] == 1, "response"] = "gibberish 00"  # p0 layer 1 == p0 layer 0 text
    with JudgeServer() as server:
        run = run_judge(responses, _settings(server, concurrency=4), tmp_path / "c.jsonl", "m", "d", {KEY_ENV: KEY})
        assert run.requests_sent == server.n_requests == len({json.dumps(b, sort_keys=True) for b in server.bodies})


def test_retries_survive_injected_429_and_500(tmp_path: Path) -> None:
    responses = _responses()
    with JudgeServer() as server:
        server.fail_next(429, 500, 503, 429)
        settings = _settings(server)
        run = run_judge(responses, settings, tmp_path / "c.jsonl", "m", "d", environ={KEY_ENV: KEY})
        assert sorted(server.statuses) == [200] * 5 + [429, 429, 500, 503]
        assert run.table["score"].tolist() == _expected_scores(settings, responses)


def test_exhausted_retries_end_missing_uncached_and_rerun_recovers(tmp_path: Path) -> None:
    responses = _responses().query("prompt_id == 'p0' and layer <= 0")
    cache = tmp_path / "c.jsonl"
    with JudgeServer() as server:
        server.fail_next(*[500] * 3)
        settings = _settings(server, max_retries=2, concurrency=1)
        run = run_judge(responses, settings, cache, "m", "d", environ={KEY_ENV: KEY})
        row = run.table.iloc[0]
        assert row["status"] == "failed" and row["reason"] == "InternalServerError 500" and np.isnan(row["score"])
        assert len(JudgeCache(cache)) == 0
        again = run_judge(responses, settings, cache, "m", "d", environ={KEY_ENV: KEY})
        assert again.table.iloc[0]["status"] == "ok" and server.n_requests == 4


def test_timeouts_are_retried_then_scored(tmp_path: Path) -> None:
    responses = _responses().query("prompt_id == 'p0' and layer <= 0")
    with JudgeServer() as server:
        server.delay_next(2.0, 2.0)  # two answers arrive after the client gave up
        settings = _settings(server, timeout_s=0.5, max_retries=3, concurrency=1)
        run = run_judge(responses, settings, tmp_path / "c.jsonl", "m", "d", environ={KEY_ENV: KEY})
        row = run.table.iloc[0]
        assert row["status"] == "ok" and row["score"] == _expected_scores(settings, responses)[0]
        assert server.arrivals == 3  # the slow ones reached the server too: these were real timeouts


def test_unreachable_endpoint_ends_failed_with_reason(tmp_path: Path) -> None:
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = JudgeSettings(
        base_url=f"http://127.0.0.1:{port}/v1",
        api_key_env=KEY_ENV,
        max_retries=2,
        backoff_s=0.001,
        backoff_max_s=0.01,
        timeout_s=2.0,
        concurrency=1,
    )
    responses = _responses().query("prompt_id == 'p0'")
    run = run_judge(responses, settings, tmp_path / "c.jsonl", "m", "d", environ={KEY_ENV: KEY})
    scored = run.table[run.table["status"] != "identical"]
    assert (scored["status"] == "failed").all() and scored["score"].isna().all()
    assert set(scored["reason"]) == {"APIConnectionError"}
    assert len(JudgeCache(tmp_path / "c.jsonl")) == 0  # nothing cached: a rerun will try again


def test_malformed_answers_end_missing_and_stay_cached(tmp_path: Path) -> None:
    responses = _responses().query("prompt_id == 'p0' and layer <= 0")
    cache = tmp_path / "c.jsonl"
    with JudgeServer() as server:
        server.answer_next("about seven", "7.5", "between 6 and 7")
        settings = _settings(server, malformed_retries=2, concurrency=1)
        run = run_judge(responses, settings, cache, "m", "d", environ={KEY_ENV: KEY})
        row = run.table.iloc[0]
        assert row["status"] == "malformed" and np.isnan(row["score"]) and server.n_requests == 3
        rerun = run_judge(responses, settings, cache, "m", "d", environ={KEY_ENV: KEY})
        assert rerun.table.iloc[0]["status"] == "malformed" and server.n_requests == 3  # never pays twice
        metrics, _, _ = summarise_verdicts(rerun.table, "m", "d", n_boot=10)
        assert np.isnan(metrics["value"]).all() and metrics["n"].tolist() == [0]


def test_malformed_then_valid_answer_is_used(tmp_path: Path) -> None:
    responses = _responses().query("prompt_id == 'p0' and layer <= 0")
    with JudgeServer() as server:
        server.answer_next("I'd say roughly", "4")
        run = run_judge(responses, _settings(server, concurrency=1), tmp_path / "c.jsonl", "m", "d", {KEY_ENV: KEY})
        assert run.table.iloc[0]["score"] == 4.0 and server.n_requests == 2


def test_no_key_skips_with_one_message(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with JudgeServer() as server, caplog.at_level(logging.INFO):
        run = run_judge(_responses(), _settings(server), tmp_path / "c.jsonl", "m", "d", environ={})
        assert server.n_requests == 0
    assert (run.table["status"] == "skipped").all() and run.skipped_reason == f"no API key: ${KEY_ENV} is not set"
    messages = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(messages) == 1 and KEY_ENV in messages[0] and "--forcerun ablation_judge" in messages[0]
    metrics, replicates, _ = summarise_verdicts(run.table, "m", "d")
    assert metrics.empty and replicates.empty  # the map then falls back to a judge-free metric
    assert not (tmp_path / "c.jsonl").exists()


def test_fatal_error_stops_sending(tmp_path: Path) -> None:
    with JudgeServer(expected_key="another-key") as server:
        run = run_judge(_responses(), _settings(server, concurrency=1), tmp_path / "c.jsonl", "m", "d", {KEY_ENV: KEY})
        assert server.n_requests == 1
    failed = run.table[run.table["status"] == "failed"]
    assert len(failed) == 5 and failed["reason"].iloc[0] == "AuthenticationError 401"
    assert failed["reason"].iloc[1:].str.startswith("not sent after AuthenticationError 401").all()


def test_summary_means_over_scored_prompts() -> None:
    table = pd.DataFrame(
        dict(
            prompt_id=["a", "b", "c", "a", "b", "c"],
            layer=[0, 0, 0, 1, 1, 1],
            score=[2.0, 4.0, np.nan, 9.0, 9.0, 6.0],
            status=["ok", "ok", "malformed", "ok", "ok", "ok"],
        )
    )
    metrics, replicates, _ = summarise_verdicts(table, "m", "d", n_boot=50, min_ok_share=0.5)
    by_layer = metrics.set_index("layer")
    assert by_layer.loc[0, "value"] == 3.0 and by_layer.loc[0, "n"] == 2 and "1 of 3" in by_layer.loc[0, "note"]
    assert by_layer.loc[1, "value"] == 8.0 and by_layer.loc[1, "n"] == 3
    assert (metrics["metric"] == "judge_score").all() and len(replicates) == 100


def _judge_job(tmp_path: Path, judge_config: dict) -> SimpleNamespace:
    responses = tmp_path / "in" / "r.parquet"
    responses.parent.mkdir(parents=True)
    # The judge-free metrics too, as ablation_generate writes them (the summary reads both tables).
    _responses().assign(kl=0.5, logprob_drop=0.1, token_overlap=0.5, identical=0.0).to_parquet(responses)
    out = tmp_path / "out"
    names = ("judge",)
    suffix: dict[str, str] = {}
    settings = JudgeSettings.from_dict(judge_config)
    return SimpleNamespace(
        input=SimpleNamespace(responses=str(responses)),
        output=SimpleNamespace(**{n: str(out / f"{n}{suffix.get(n, '.parquet')}") for n in names}),
        log=[str(tmp_path / "logs" / "judge.log")],
        params=SimpleNamespace(
            judge=settings.score_settings(),
            bootstrap={"n": 20, "seed": 0},
            cache_dir=str(tmp_path / "cache"),
            retry="",
            code="test",
        ),
        wildcards=SimpleNamespace(model="m", domain="d"),
        threads=1,
        resources=SimpleNamespace(),
        config={"judge": judge_config},
    )


def _files_containing(root: Path, secret: str) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


def test_entry_script_never_writes_the_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)
    # The server rejects this key with a message quoting it, as real providers partly do.
    with JudgeServer(expected_key="the-right-key") as server:
        config = {"base_url": server.base_url, "api_key_env": KEY_ENV, "concurrency": 1, "backoff_s": 0.001}
        rejected = _judge_job(tmp_path / "rejected", config)
        run_entry("ablation_judge.py", rejected)
        assert server.n_requests == 1
    assert pd.read_parquet(rejected.output.judge)["status"].value_counts().to_dict() == {
        "failed": 5,
        "identical": 1,
    }
    # Failed pairs: a retry token beside the cache (the rule's param `retry`), so the next run retries.
    assert (tmp_path / "rejected" / "cache" / "m" / "d.retry").read_text().strip()
    with JudgeServer() as server:
        config = {**config, "base_url": server.base_url}
        job = _judge_job(tmp_path / "accepted", config)
        run_entry("ablation_judge.py", job)
        assert server.authorizations and set(server.authorizations) == {f"Bearer {KEY}"}
    table = pd.read_parquet(job.output.judge)
    assert table["status"].value_counts().to_dict() == {"ok": 5, "identical": 1}
    assert not (tmp_path / "accepted" / "cache" / "m" / "d.retry").exists()  # nothing to retry
    summary = _summary_job(job)
    run_entry("ablation_summary.py", summary)
    assert (pd.read_parquet(summary.output.judge_metrics)["metric"] == "judge_score").all()
    written = list(tmp_path.rglob("*"))
    assert any(p.suffix == ".jsonl" for p in written) and any(p.suffix == ".log" for p in written)
    assert _files_containing(tmp_path, KEY) == []
    assert _files_containing(tmp_path, KEY[-12:]) == []  # nor a provider-style partial echo
    provenance = read_provenance(job.output.judge)
    assert provenance["judge"]["api_key_env"] == KEY_ENV and provenance["skipped"] is None
    assert read_provenance(summary.output.judge_curves_png)["upstream"][job.output.judge]["rule"] == "job"


def test_entry_script_without_key_succeeds_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    job = _judge_job(tmp_path, {"api_key_env": KEY_ENV})
    run_entry("ablation_judge.py", job)
    assert (pd.read_parquet(job.output.judge)["status"] == "skipped").all()
    summary = _summary_job(job)
    run_entry("ablation_summary.py", summary)
    assert pd.read_parquet(summary.output.judge_metrics).empty
    assert Path(summary.output.judge_curves_png).stat().st_size > 0
    log = Path(job.log[0]).read_text()
    assert log.count("LLM judge skipped") == 1
    assert read_provenance(job.output.judge)["skipped"].startswith("no API key")


def _summary_job(judge_job: SimpleNamespace) -> object:
    out = Path(judge_job.output.judge).parent / "summary"
    return ablation_summary_job(judge_job.input.responses, judge_job.output.judge, out, judge_job.wildcards)


def _unusable(run) -> str:
    """The judge score a broken judge leaves: none, every row saying why (identical pairs alone would read 1.0)."""
    metrics, _, note = summarise_verdicts(run.table, "m", "d", n_boot=10)
    assert note.startswith("judge unusable") and np.isnan(metrics["value"]).all() and len(metrics) == 2
    assert (metrics["note"] == note).all()
    return note


@pytest.mark.parametrize("kind", ["wrong key", "non-JSON replies", "out-of-range scores", "no number"])
def test_each_broken_judge_kind_leaves_no_judge_score(tmp_path: Path, kind: str) -> None:
    """5 judged pairs and 1 token-identical one: whatever breaks, no flat 1.0 curve, and the counts say what."""
    server = JudgeServer(
        expected_key="another-key" if kind == "wrong key" else None, non_json=kind == "non-JSON replies"
    )
    with server:
        settings = _settings(server, concurrency=1, malformed_retries=1)
        if kind == "out-of-range scores":
            server.answer_next(*["11", "0"] * 5)
        elif kind == "no number":
            server.answer_next(*["The second one is worse."] * 10)
        run = run_judge(_responses(), settings, tmp_path / "c.jsonl", "m", "d", environ={KEY_ENV: KEY})
    status = "malformed" if kind in ("out-of-range scores", "no number") else "failed"
    assert run.status_counts == {"identical": 1, status: 5}
    assert f"0 of 5 judged pairs scored (1 identical, 5 {status}" in _unusable(run)


def test_refused_connections_trip_the_circuit_breaker(tmp_path: Path) -> None:
    with JudgeServer() as server:
        url = server.base_url
    # The server is gone: every connection is refused. Two retries per request, breaker after 2 requests.
    settings = JudgeSettings(
        base_url=url, api_key_env=KEY_ENV, concurrency=1, max_retries=2, backoff_s=0.0, backoff_max_s=0.0,
        breaker_failures=2,
    )  # fmt: skip
    run = run_judge(_responses(), settings, tmp_path / "c.jsonl", "m", "d", environ={KEY_ENV: KEY})
    assert run.requests_sent == 2 * 3  # two requests, three attempts each; the other three pairs never sent
    reasons = run.table.loc[run.table["status"] == "failed", "reason"].tolist()
    assert len(reasons) == 5 and reasons[0] == "APIConnectionError"
    assert all(r.startswith("not sent after circuit breaker: 2 requests in a row failed") for r in reasons[2:])
    assert "5 failed" in _unusable(run)


def test_an_answer_resets_the_breaker_and_a_rerun_retries_only_failed_pairs(tmp_path: Path) -> None:
    cache = tmp_path / "c.jsonl"
    with JudgeServer() as server:
        settings = _settings(server, concurrency=1, max_retries=0, breaker_failures=2)
        # Failures alternate with answers: never two in a row, so the breaker stays closed.
        server.fail_next(500)
        run = run_judge(_responses(), settings, cache, "m", "d", environ={KEY_ENV: KEY})
        assert run.status_counts == {"failed": 1, "identical": 1, "ok": 4} and server.n_requests == 5
        usable, _, note = summarise_verdicts(run.table, "m", "d", n_boot=10)
        assert note == "verdicts: 4 ok, 1 identical, 1 failed" and np.isfinite(usable["value"]).any()
        rerun = run_judge(_responses(), settings, cache, "m", "d", environ={KEY_ENV: KEY})
        assert rerun.status_counts == {"identical": 1, "ok": 5} and server.n_requests == 6  # the failed pair only
        assert rerun.table["cached"].sum() == 4


def test_an_unusable_judge_never_becomes_the_map_and_the_map_says_so(tmp_path: Path) -> None:
    from kmap.maps.curves import MapSettings, consensus, curve_intervals, map_curve
    from kmap.maps.figures import draw_map
    from kmap.methods.ablation.summary import summarise

    responses = _responses().assign(kl=[0.0, 2.0, 0.5] * 3, logprob_drop=0.1, token_overlap=0.5, identical=0.0)
    with JudgeServer(expected_key="another-key") as server:
        run = run_judge(responses, _settings(server, concurrency=1), tmp_path / "c.jsonl", "m", "d", {KEY_ENV: KEY})
    judge_metrics, _, _ = summarise_verdicts(run.table, "m", "d", n_boot=10)
    free_metrics, _ = summarise(responses, "m", "d", n_boot=10)
    metrics = pd.concat([free_metrics, judge_metrics], ignore_index=True)
    curve = map_curve(metrics, None, "ablation", "d", MapSettings())
    assert curve is not None and curve.metric == "kl"
    assert (
        curve.note.startswith("judge_score not used (judge unusable: 0 of 5 judged pairs scored")
        and "kl instead" in curve.note
    )
    # With a working judge the judge score stands and there is nothing to say.
    with JudgeServer() as server:
        good = run_judge(responses, _settings(server), tmp_path / "g.jsonl", "m", "d", {KEY_ENV: KEY})
    metrics = pd.concat([free_metrics, summarise_verdicts(good.table, "m", "d", n_boot=10)[0]], ignore_index=True)
    chosen = map_curve(metrics, None, "ablation", "d", MapSettings())
    assert chosen is not None and chosen.metric == "judge_score" and chosen.note == ""
    # The note is printed under the map figure.
    _, cells = curve_intervals(curve, MapSettings().rule_params())
    agree = consensus(cells, MapSettings().consensus_methods)
    draw_map(cells, agree, tmp_path / "map.png", tmp_path / "map.pdf", "m", notes=[curve.note])
    assert (tmp_path / "map.png").stat().st_size > 0


def test_workflow_retries_failed_verdicts_on_the_next_plain_run(tmp_path: Path) -> None:
    """Through Snakemake: a judge that fails leaves the domain without a judge score, and the next plain run plans
    the judge again (its retry marker is newer than its output) and sends only the failed pairs; then nothing."""
    from tests.workflow import copy_workflow, job_counts, local_env, snakemake, write_config

    work = copy_workflow(tmp_path / "wf")
    target = "results/ablation/tiny-llama/disease.judge_metrics.parquet"

    def run(server: JudgeServer, *extra: str) -> str:
        config = {
            "models": {"tiny-llama": {"kind": "tiny", "architecture": "llama", "dtype": "float32"}},
            "methods": ["ablation"],
            "domains": ["disease"],
            "tiny": {"n_layers": 2, "hidden_size": 32},
            "bootstrap": {"n": 20},
            "ablation": {"max_new_tokens": 3},
            "judge": {"base_url": server.base_url, "api_key_env": KEY_ENV, "concurrency": 2, "backoff_s": 0.001},
        }
        write_config(work, config)
        env = local_env(**{KEY_ENV: KEY})
        return snakemake(work, *extra, target, "--configfile", "config/test.yaml", env=env).stdout

    with JudgeServer(expected_key="another-key") as server:
        run(server)
    first = pd.read_parquet(work / "results/ablation/tiny-llama/disease.judge.parquet")
    failed = int((first["status"] == "failed").sum())
    assert failed > 0 and set(first["status"]) <= {"failed", "identical"}
    assert np.isnan(pd.read_parquet(work / target)["value"]).all()  # no judge score from a broken judge
    with JudgeServer() as server:
        assert job_counts(run(server, "-n")) == {"ablation_judge": 1, "ablation_summary": 1}
        run(server)
        # Only the failed pairs were sent (pairs asking the very same question share one request).
        assert server.n_requests == first.loc[first["status"] == "failed", "request_hash"].nunique()
        assert job_counts(run(server, "-n")) == {}
    judged = pd.read_parquet(work / "results/ablation/tiny-llama/disease.judge.parquet")
    assert set(judged["status"]) <= {"ok", "identical"} and np.isfinite(pd.read_parquet(work / target)["value"]).any()
