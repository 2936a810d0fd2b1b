"""LLM judge of ablated responses: an OpenAI-compatible chat model scores each (intact, ablated) pair from 1
(no change) to 10 (gibberish).

- The API key is read from the environment variable named by ``api_key_env`` and handed to the client only;
  it never enters a request hash, a cache entry, a table, a log line or provenance. Errors are recorded by
  class and status code, never by message (providers echo part of a rejected key in their messages).
- Every answer received is cached on disk by request hash (sha256 of base URL + request body), in one
  append-only JSON-lines file per (model, domain): a rerun never pays twice. An entry holds every raw answer
  for its request, so a malformed answer stays cached too and parsing can improve without a new call.
- 429, 5xx, timeouts and connection errors are retried with exponential backoff (``Retry-After``
  honoured, capped); an exhausted request ends as missing with status ``failed`` and is *not* cached, so a
  rerun tries it again. 401/403/404 stop all further requests (every one would fail the same way).
- A malformed answer (not exactly one integer 1-10) is re-asked ``malformed_retries`` times, then recorded
  as missing with status ``malformed``: a score is never guessed.
- With ``identical_is_1`` a pair whose responses are token-identical scores 1 without a call (the scale's
  definition of "no change"), status ``identical``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kmap.core.settings import default, known_keys, schema_field
from kmap.methods.ablation.settings import INTACT

log = logging.getLogger(__name__)

SYSTEM_PROMPT: str = default("judge", "system_prompt")
USER_PROMPT: str = default("judge", "user_prompt")
JUDGE_COLUMNS = (
    "model",
    "domain",
    "prompt_id",
    "layer",
    "score",
    "status",
    "reason",
    "request_hash",
    "cached",
)
# Settings that change a score: the rule's params hold only these, so transport knobs never force a rerun.
SCORE_KEYS = (
    "base_url",
    "model",
    "temperature",
    "max_tokens",
    "system_prompt",
    "user_prompt",
    "identical_is_1",
)


@dataclass(frozen=True)
class JudgeSettings:
    base_url: str = schema_field("judge", "base_url")
    model: str = schema_field("judge", "model")
    api_key_env: str = schema_field("judge", "api_key_env")
    temperature: float = schema_field("judge", "temperature")
    max_tokens: int = schema_field("judge", "max_tokens")
    system_prompt: str = schema_field("judge", "system_prompt")
    user_prompt: str = schema_field("judge", "user_prompt")
    identical_is_1: bool = schema_field("judge", "identical_is_1")
    concurrency: int = schema_field("judge", "concurrency")
    timeout_s: float = schema_field("judge", "timeout_s")
    max_retries: int = schema_field("judge", "max_retries")
    backoff_s: float = schema_field("judge", "backoff_s")
    backoff_max_s: float = schema_field("judge", "backoff_max_s")
    malformed_retries: int = schema_field("judge", "malformed_retries")
    breaker_failures: int = schema_field("judge", "breaker_failures")
    min_ok_share: float = schema_field("judge", "min_ok_share")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> JudgeSettings:
        return cls(**known_keys(cls, values, "judge"))

    def score_settings(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in SCORE_KEYS}

    def record(self) -> dict[str, Any]:
        """Settings for provenance: the key variable's name is recorded, its value never is."""
        return asdict(self)


@dataclass(frozen=True)
class Verdict:
    score: float
    status: str  # ok | identical | malformed | failed | skipped
    reason: str = ""
    request_hash: str = ""
    cached: bool = False


class JudgeFailure(RuntimeError):
    """A request that could not be answered; ``reason`` is safe to record (class and status only)."""

    def __init__(self, reason: str, fatal: bool = False, exhausted: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.fatal = fatal
        # Retryable (unreachable, timeout, 5xx) and still failing after every retry: counts toward the breaker.
        self.exhausted = exhausted


def cache_file(cache_dir: str | Path, model: str, domain: str) -> Path:
    """A (model, domain)'s answer cache: outside any run's outputs, so a rerun pays only for new pairs."""
    return Path(cache_dir) / model / f"{domain}.jsonl"


def retry_file(cache_dir: str | Path, model: str, domain: str) -> Path:
    """Beside the cache, the retry token a job that left pairs failed writes (the rule reads it as a param)."""
    return cache_file(cache_dir, model, domain).with_suffix(".retry")


def api_key(settings: JudgeSettings, environ: Mapping[str, str] = os.environ) -> str | None:
    key = environ.get(settings.api_key_env, "").strip()
    return key or None


def build_request(settings: JudgeSettings, prompt: str, intact: str, ablated: str) -> dict[str, Any]:
    # format() only reads the template's own fields, so braces inside responses are kept verbatim.
    user = settings.user_prompt.format(prompt=prompt, intact=intact, ablated=ablated)
    return {
        "model": settings.model,
        "messages": [
            {"role": "system", "content": settings.system_prompt},
            {"role": "user", "content": user},
        ],
        "temperature": settings.temperature,
        "max_tokens": settings.max_tokens,
    }


def request_hash(base_url: str, request: Mapping[str, Any]) -> str:
    body = {"base_url": base_url.rstrip("/"), "request": request}
    blob = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


_INTEGER = re.compile(r"(?<![-\d])\d+(?!\d)")
_DECIMAL = re.compile(r"\d[.,]\d")
_OUT_OF_TEN = re.compile(r"^\D*?(\d+)\s*/\s*10\D*$")


def parse_score(text: str | None) -> int | None:
    """The score in an answer: exactly one integer in 1..10 (``7``, ``Score: 7.``, ``7/10``), else None."""
    if not text:
        return None
    out_of_ten = _OUT_OF_TEN.match(text.strip())
    numbers = [out_of_ten.group(1)] if out_of_ten else _INTEGER.findall(text)
    if len(numbers) != 1 or _DECIMAL.search(text):
        return None
    value = int(numbers[0])
    return value if 1 <= value <= 10 else None


class JudgeCache:
    """Append-only JSON-lines cache: one line per request update, the last line for a hash wins. A line cut
    short by a killed job is skipped when read."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._answers: dict[str, list[str]] = {}
        if self.path.exists():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue
                self._answers[entry["hash"]] = list(entry["answers"])

    def __len__(self) -> int:
        return len(self._answers)

    def get(self, key: str) -> list[str]:
        with self._lock:
            return list(self._answers.get(key, []))

    def put(self, key: str, answers: list[str]) -> None:
        line = json.dumps({"hash": key, "answers": answers}, ensure_ascii=False) + "\n"
        with self._lock:
            self._answers[key] = list(answers)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(line)
                handle.flush()


def describe_error(error: BaseException) -> str:
    """Class name and HTTP status: never the message, which may quote the key."""
    status = getattr(error, "status_code", None)
    return f"{type(error).__name__}" + (f" {status}" if status else "")


def classify(error: BaseException) -> str:
    """``retry`` (rate limit, 5xx, timeout, connection), ``fatal`` (auth, permission, unknown model/URL),
    or ``give_up`` (this request only, e.g. 400)."""
    import openai

    if isinstance(error, openai.APIConnectionError | openai.RateLimitError | openai.InternalServerError):
        return "retry"  # APITimeoutError is an APIConnectionError
    status = getattr(error, "status_code", None)
    if status == 408 or status == 409 or (status is not None and status >= 500):
        return "retry"
    if isinstance(error, openai.AuthenticationError | openai.PermissionDeniedError | openai.NotFoundError):
        return "fatal"
    return "give_up"


def retry_delay(error: BaseException, attempt: int, settings: JudgeSettings) -> float:
    """Retry-After when the server sends one, else exponential backoff with jitter; both capped."""
    response = getattr(error, "response", None)
    header = response.headers.get("retry-after") if response is not None else None
    try:
        if header is not None:
            return min(max(float(header), 0.0), settings.backoff_max_s)
    except ValueError:
        pass
    return min(settings.backoff_s * 2**attempt, settings.backoff_max_s) * random.uniform(0.5, 1.0)


def with_retries(send: Callable[[], str], settings: JudgeSettings, sleep: Callable[[float], None] = time.sleep) -> str:
    """``send()`` until it answers; JudgeFailure after ``max_retries`` retries or a non-retryable error."""
    for attempt in range(settings.max_retries + 1):
        try:
            return send()
        except JudgeFailure:
            raise
        except Exception as error:  # noqa: BLE001 - classified below; unknown kinds give up on this request
            kind = classify(error)
            if kind != "retry" or attempt == settings.max_retries:
                raise JudgeFailure(describe_error(error), fatal=kind == "fatal", exhausted=kind == "retry") from None
            sleep(retry_delay(error, attempt, settings))
    raise AssertionError("unreachable")


def make_client(settings: JudgeSettings, key: str) -> Any:
    import openai

    # Retries are ours (logged, capped, testable), so the client's own are off.
    return openai.OpenAI(api_key=key, base_url=settings.base_url, timeout=settings.timeout_s, max_retries=0)


def ask(client: Any, request: Mapping[str, Any]) -> str:
    response = client.chat.completions.create(**request)
    if not response.choices:
        return ""
    return response.choices[0].message.content or ""


class Judge:
    """Scores pairs through ``client``; stops sending after a fatal error (every request would fail)."""

    def __init__(self, settings: JudgeSettings, client: Any, cache: JudgeCache) -> None:
        self.settings = settings
        self.client = client
        self.cache = cache
        self.requests_sent = 0
        self._fatal: str | None = None
        self._failing_in_a_row = 0  # requests that failed for good since the last answer (circuit breaker)
        self._lock = threading.Lock()
        self._pending: dict[str, threading.Lock] = {}

    def _request_lock(self, key: str) -> threading.Lock:
        """One lock per request hash: a duplicate pair waits for the first answer, then reads the cache."""
        with self._lock:
            return self._pending.setdefault(key, threading.Lock())

    def _send(self, request: Mapping[str, Any]) -> str:
        if self._fatal:
            raise JudgeFailure(f"not sent after {self._fatal}", fatal=True)
        with self._lock:
            self.requests_sent += 1
        return ask(self.client, request)

    def score(self, prompt: str, intact: str, ablated: str, identical: bool = False) -> Verdict:
        if identical and self.settings.identical_is_1:
            return Verdict(1.0, "identical")
        request = build_request(self.settings, prompt, intact, ablated)
        key = request_hash(self.settings.base_url, request)
        with self._request_lock(key):
            return self._score(request, key)

    def _score(self, request: Mapping[str, Any], key: str) -> Verdict:
        answers = self.cache.get(key)
        cached = bool(answers)
        allowed = 1 + self.settings.malformed_retries
        while True:
            for answer in answers:
                if (value := parse_score(answer)) is not None:
                    return Verdict(float(value), "ok", request_hash=key, cached=cached)
            if len(answers) >= allowed:
                return Verdict(np.nan, "malformed", f"{len(answers)} malformed answer(s)", key, cached)
            try:
                answers.append(with_retries(lambda: self._send(request), self.settings))
            except JudgeFailure as failure:
                self._failed(failure)
                return Verdict(np.nan, "failed", failure.reason, key, cached)
            with self._lock:
                self._failing_in_a_row = 0
            self.cache.put(key, answers)
            cached = False

    def _failed(self, failure: JudgeFailure) -> None:
        """Stop sending after a fatal error, or (circuit breaker) after ``breaker_failures`` requests in a row
        failed for good: an unreachable endpoint would otherwise cost every pair its full retry budget."""
        with self._lock:
            if failure.exhausted:
                self._failing_in_a_row += 1
            reason = failure.reason if failure.fatal else None
            if failure.exhausted and self._failing_in_a_row >= self.settings.breaker_failures:
                reason = f"circuit breaker: {self._failing_in_a_row} requests in a row failed ({failure.reason})"
            if reason is None or self._fatal:
                return
            self._fatal = reason
        log.error(
            "LLM judge stopped after %s: check the key in $%s, judge.base_url and judge.model; the remaining pairs "
            "are recorded as failed, and the next run retries them (answers already received are kept)",
            reason,
            self.settings.api_key_env,
        )


def pairs_from_responses(responses: pd.DataFrame) -> pd.DataFrame:
    """One row per (prompt, ablated layer): the prompt, the intact and the ablated response texts."""
    intact = responses[responses["layer"] == INTACT].set_index("prompt_id")
    ablated = responses[responses["layer"] != INTACT]
    pairs = ablated[["prompt_id", "layer", "prompt", "response"]].rename(columns={"response": "ablated"})
    intact_tokens = pairs["prompt_id"].map(intact["tokens"])
    identical = [list(a) == list(b) for a, b in zip(ablated["tokens"], intact_tokens, strict=True)]
    return pairs.assign(intact=pairs["prompt_id"].map(intact["response"]).to_numpy(), identical=identical)


def judge_pairs(judge: Judge, pairs: pd.DataFrame, progress: Callable[[int, int], None] | None = None) -> list[Verdict]:
    """Verdicts in the order of ``pairs``, ``concurrency`` requests in flight."""
    rows = list(pairs[["prompt", "intact", "ablated", "identical"]].itertuples(index=False))
    done = 0
    lock = threading.Lock()

    def one(row: Any) -> Verdict:
        nonlocal done
        verdict = judge.score(row.prompt, row.intact, row.ablated, bool(row.identical))
        with lock:
            done += 1
            if progress:
                progress(done, len(rows))
        return verdict

    with ThreadPoolExecutor(max_workers=max(1, judge.settings.concurrency)) as pool:
        return list(pool.map(one, rows))


def skipped(pairs: pd.DataFrame, reason: str) -> list[Verdict]:
    return [Verdict(np.nan, "skipped", reason) for _ in range(len(pairs))]


def verdict_table(pairs: pd.DataFrame, verdicts: list[Verdict], model: str, domain: str) -> pd.DataFrame:
    table = pd.DataFrame([asdict(v) for v in verdicts], columns=[f.name for f in fields(Verdict)])
    table.insert(0, "layer", pairs["layer"].to_numpy())
    table.insert(0, "prompt_id", pairs["prompt_id"].to_numpy())
    table = table.assign(model=model, domain=domain)[list(JUDGE_COLUMNS)]
    return table.astype({"score": "float64", "layer": "int64", "cached": "bool"})


@dataclass
class JudgeRun:
    table: pd.DataFrame
    skipped_reason: str | None
    requests_sent: int
    status_counts: dict[str, int]


def run_judge(
    responses: pd.DataFrame,
    settings: JudgeSettings,
    cache_path: str | Path,
    model: str,
    domain: str,
    environ: Mapping[str, str] = os.environ,
    progress: Callable[[int, int], None] | None = None,
) -> JudgeRun:
    """Judge every (intact, ablated) pair, or mark all skipped when the key variable is unset."""
    pairs = pairs_from_responses(responses)
    key = api_key(settings, environ)
    reason = None
    if key is None:
        reason = f"no API key: ${settings.api_key_env} is not set"
        log.warning(
            "LLM judge skipped (%s); the map uses the judge-free metrics. To judge, set it and run "
            "snakemake --forcerun ablation_judge",
            reason,
        )
        verdicts, sent = skipped(pairs, reason), 0
    else:
        judge = Judge(settings, make_client(settings, key), JudgeCache(cache_path))
        verdicts, sent = judge_pairs(judge, pairs, progress), judge.requests_sent
    table = verdict_table(pairs, verdicts, model, domain)
    counts = {str(k): int(v) for k, v in table["status"].value_counts().sort_index().items()}
    return JudgeRun(table, reason, sent, counts)
