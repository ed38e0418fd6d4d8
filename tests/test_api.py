"""The HTTP API through its test client (issue 5): every endpoint, auth failures and limits."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient  # noqa: E402

from classifier.errors import ConfigurationError  # noqa: E402
from granttag.settings import Settings  # noqa: E402

ADMIN = "admin-key-0123456789abcdef"
CLASSIFY = "classify-key-0123456789abcdef"
REDIS_DB = 13
BROKER = f"redis://127.0.0.1:6379/{REDIS_DB}"
QUANTUM = {
    "title": "超伝導量子ビットの誤り訂正",
    "abstract": "超伝導量子ビットを用いた量子誤り訂正を実証し、量子コンピュータの実現を目指す。",
}
KAKEN_SOURCE = {"kind": "database", "url": "sqlite:///kaken.db", "table": "projects"}
HUMANITIES = {
    "title": "道元『正法眼蔵』における時間論の比較哲学的研究",
    "abstract": "道元の「有時」巻に示される時間理解を、ハイデガーの時間性分析およびベルクソンの持続概念と比較し、"
    "その独自性を哲学史の中に位置づける。",
}


def make_settings(models: Path, data: Path, **overrides: Any) -> Settings:
    """Settings for a test app: two keys, the test model store, Redis database 13."""
    values: dict[str, Any] = {
        "api_keys": f"{ADMIN}:admin,{CLASSIFY}:classify",
        "models_dir": models,
        "data_dir": data,
        "broker_url": BROKER,
        "result_backend": BROKER,
        "api_model_check_seconds": 0,
        "api_key_file": None,
        "api_no_auth": False,
        "api_queue_mode": True,
    }
    values.update(overrides)
    return Settings(**values)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


class FakeJobs:
    """Stands in for worker/jobs.py in the API tests: records calls, answers like the interface."""

    def __init__(self) -> None:
        self.started: list[tuple[dict[str, Any], bool]] = []
        self.cancelled: list[str] = []
        self.jobs: dict[str, dict[str, Any]] = {}
        self.uploaded = b""

    def start_job(self, settings: Any, source: dict[str, Any], *, retag: bool = False, local: bool = False) -> str:
        job_id = f"job{len(self.started) + 1}"
        self.started.append((source, retag))
        if source.get("kind") == "file":
            self.uploaded = Path(source["path"]).read_bytes()
        self.jobs[job_id] = {
            "id": job_id,
            "state": "running",
            "total": 4,
            "tagged": 2,
            "failed": 1,
            "skipped": 0,
            "model_versions": ["v1"],
            "created": "2026-01-01T00:00:00+00:00",
            "updated": "2026-01-01T00:00:01+00:00",
        }
        return job_id

    def _job(self, job_id: str) -> dict[str, Any]:
        from classifier.errors import GranttagError

        if job_id not in self.jobs:

            class JobNotFoundError(GranttagError):
                pass

            raise JobNotFoundError(f"no job {job_id!r}")
        return self.jobs[job_id]

    def job_status(self, settings: Any, job_id: str) -> dict[str, Any]:
        return dict(self._job(job_id))

    def job_results(self, settings: Any, job_id: str, offset: int, limit: int) -> list[dict[str, Any]]:
        rows = [{"id": f"r{i}", "status": "ok", "domains": [], "pillars": [{"id": "science_renaissance", "score": 0.9}]} for i in range(3)]
        return rows[offset : offset + limit]

    def cancel_job(self, settings: Any, job_id: str) -> bool:
        self._job(job_id)["state"] = "cancelled"
        self.cancelled.append(job_id)
        return True

    def list_jobs(self, settings: Any) -> list[dict[str, Any]]:
        return list(self.jobs.values())


@pytest.fixture(scope="module")
def api(model_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A test client of an app over the session model, with fake job functions."""
    from granttag.api import create_app

    jobs = FakeJobs()
    app = create_app(make_settings(model_root, tmp_path_factory.mktemp("apidata"), api_job_sources={"kaken": KAKEN_SOURCE}), jobs=jobs)
    with TestClient(app) as client:
        client.jobs = jobs  # type: ignore[attr-defined]
        yield client


@pytest.fixture
def redis13() -> Any:
    redis = pytest.importorskip("redis")
    client = redis.Redis.from_url(BROKER)
    try:
        client.ping()
    except redis.exceptions.ConnectionError:
        pytest.skip("needs Redis on 127.0.0.1:6379")
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


# --- classify ------------------------------------------------------------


def test_classify_quantum_text_answers_domain_with_evidence(api: TestClient) -> None:
    r = api.post("/v1/classify", json={"id": "p1", **QUANTUM}, headers=bearer(CLASSIFY))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"] == "p1"
    assert "quantum" in [d["id"] for d in body["domains"]]
    assert body["no_domain"] is False
    assert body["pillars"], "every document gets at least one pillar"
    quantum = next(d for d in body["domains"] if d["id"] == "quantum")
    assert quantum["ja"] == "量子" and quantum["en"] == "Quantum" and quantum["number"] == 13
    ev = quantum["evidence"][0]
    assert QUANTUM[ev["field"]][ev["start"] : ev["end"]] == ev["term"]
    assert body["model_version"] == api.app.state.holder.version


def test_classify_humanities_text_answers_no_domain(api: TestClient) -> None:
    r = api.post("/v1/classify", json=HUMANITIES, headers=bearer(CLASSIFY))
    assert r.status_code == 200, r.text
    assert r.json()["domains"] == []
    assert r.json()["no_domain"] is True
    assert len(r.json()["pillars"]) >= 1


@pytest.mark.parametrize(
    ("query", "check"),
    [
        ("threshold=1", lambda b: b["domains"] == [] and len(b["pillars"]) == 1),
        ("threshold=0", lambda b: len(b["domains"]) == 17 and len(b["pillars"]) == 6),
        ("threshold=0&top_k=2", lambda b: len(b["domains"]) == 2 and len(b["pillars"]) == 2),
        ("explain=false", lambda b: all(not d["evidence"] for d in b["domains"] + b["pillars"])),
        ("explain=true", lambda b: any(d["evidence"] for d in b["domains"])),
    ],
)
def test_classify_query_options_change_answer(api: TestClient, query: str, check: Any) -> None:
    r = api.post(f"/v1/classify?{query}", json=QUANTUM, headers=bearer(CLASSIFY))
    assert r.status_code == 200, r.text
    assert check(r.json()), r.json()


def test_classify_plain_text_same_as_abstract(api: TestClient) -> None:
    a = api.post("/v1/classify", json={"abstract": QUANTUM["abstract"]}, headers=bearer(CLASSIFY)).json()
    t = api.post("/v1/classify", json={"text": QUANTUM["abstract"]}, headers=bearer(CLASSIFY)).json()
    assert [(d["id"], d["score"]) for d in a["domains"]] == [(d["id"], d["score"]) for d in t["domains"]]


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("Deep learning for crop yield prediction from drone images", True),
        ("ＡＩによる作物収量予測", True),  # full-width ASCII
        ("量子センサ🔬で脳磁場を計測する", True),  # emoji
        ("深層学習 deep learning による材料探索", True),  # mixed JA/EN
        ("   \n\t ", False),  # whitespace only
        ("", False),
    ],
)
def test_classify_awkward_text_answers_or_422(api: TestClient, text: str, ok: bool) -> None:
    r = api.post("/v1/classify", json={"text": text}, headers=bearer(CLASSIFY))
    assert r.status_code == (200 if ok else 422), r.text
    if not ok:
        assert r.headers["content-type"].startswith("application/problem+json")
        assert "empty text" in r.json()["detail"]


# --- auth ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "body", "headers", "status"),
    [
        ("post", "/v1/classify", QUANTUM, {}, 401),
        ("post", "/v1/classify", QUANTUM, bearer("not-a-key-0123456789"), 401),
        ("post", "/v1/classify", QUANTUM, {"Authorization": f"Basic {ADMIN}"}, 401),
        ("post", "/v1/classify", QUANTUM, {"Authorization": f"Bearer {ADMIN}x"}, 401),
        ("get", "/v1/taxonomy", None, {}, 401),
        ("get", "/v1/models", None, {}, 401),
        ("get", "/v1/jobs", None, {}, 401),
        ("post", "/v1/feedback", {"document": {"id": "d", "text": "x"}, "domains": [], "pillars": ["governance"]}, bearer(CLASSIFY), 403),
        ("put", "/v1/models/active", {"version": "x"}, bearer(CLASSIFY), 403),
        ("post", "/v1/jobs", {"source": "kaken"}, bearer(CLASSIFY), 403),
        ("post", "/v1/classify", QUANTUM, bearer(CLASSIFY), 200),
        ("post", "/v1/classify", QUANTUM, bearer(ADMIN), 200),
        ("get", "/v1/taxonomy", None, bearer(CLASSIFY), 200),
        ("get", "/v1/models", None, bearer(CLASSIFY), 200),
        ("get", "/healthz", None, {}, 200),
    ],
)
def test_auth_role_decides_status(api: TestClient, method: str, path: str, body: Any, headers: dict[str, str], status: int) -> None:
    r = api.request(method.upper(), path, json=body, headers=headers)
    assert r.status_code == status, r.text
    if status == 401:
        assert r.headers["www-authenticate"].startswith("Bearer")
        assert r.json()["title"] == "Unauthorized"
    if status == 403:
        assert "admin" in r.json()["detail"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"api_keys": None}, "no API keys configured"),
        ({"api_keys": ""}, "no API keys configured"),
        ({"api_keys": f"{ADMIN}:root"}, "unknown role 'root'"),
        ({"api_keys": "short:admin"}, "at least 16"),
        ({"api_keys": f"{ADMIN}"}, "expected KEY:ROLE"),
        ({"api_keys": None, "api_key_file": Path("/nonexistent/keys")}, "cannot read the API key file"),
    ],
)
def test_create_app_bad_keys_refuses_to_start(model_root: Path, tmp_path: Path, overrides: dict[str, Any], message: str) -> None:
    from granttag.api import create_app

    with pytest.raises(ConfigurationError, match=message):
        create_app(make_settings(model_root, tmp_path, **overrides))


def test_create_app_key_file_gives_roles(model_root: Path, tmp_path: Path) -> None:
    from granttag.api import create_app

    keys = tmp_path / "keys"
    keys.write_text(f"# operator keys\n{CLASSIFY}x:classify\n\n{ADMIN}x:admin  # ops\n", encoding="utf-8")
    app = create_app(make_settings(model_root, tmp_path, api_keys=None, api_key_file=keys))
    client = TestClient(app)
    body = {"document": {"id": "d", "text": "量子暗号"}, "domains": ["quantum"], "pillars": ["security"]}
    assert client.post("/v1/feedback", json=body, headers=bearer(CLASSIFY + "x")).status_code == 403
    assert client.post("/v1/feedback", json=body, headers=bearer(ADMIN + "x")).status_code == 201
    assert client.post("/v1/feedback", json=body, headers=bearer(ADMIN)).status_code == 401


def test_create_app_no_auth_serves_without_key(model_root: Path, tmp_path: Path) -> None:
    from granttag.api import create_app

    app = create_app(make_settings(model_root, tmp_path, api_keys=None, api_no_auth=True))
    client = TestClient(app)
    assert client.get("/v1/taxonomy").status_code == 200
    assert (
        client.post("/v1/feedback", json={"document": {"id": "d", "text": "量子"}, "domains": [], "pillars": ["governance"]}).status_code
        == 201
    )


# --- limits and malformed requests -------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"content": b'{"abstract": "x"', "headers": {"content-type": "application/json"}}, "body"),
        ({"content": b"not json", "headers": {"content-type": "application/json"}}, "body"),
        ({"content": b"[1, 2]", "headers": {"content-type": "application/json"}}, "body"),
        ({"json": {"abstract": 5}}, "body.abstract"),
        ({"json": {"abstract": ["a"]}}, "body.abstract"),
        ({"json": {"keywords": {"a": 1}}}, "body.keywords"),
        ({"json": {"abstract": "x", "extra": 1}}, "body.extra"),
        ({"json": {"abstract": "量" * 50_001}}, "body.abstract"),
        ({"json": {"abstract": "x\u0000y"}}, "body.abstract"),
        ({"json": {"title": "\ud800"}}, "body.title"),
        ({"json": {"text": "a", "abstract": "b"}}, "text"),
        ({"json": {"abstract": "x"}, "params": {"threshold": "2"}}, "query.threshold"),
        ({"json": {"abstract": "x"}, "params": {"threshold": "nan"}}, "query.threshold"),
        ({"json": {"abstract": "x"}, "params": {"top_k": "0"}}, "query.top_k"),
        ({"json": {"abstract": "x"}, "params": {"explain": "perhaps"}}, "query.explain"),
    ],
)
def test_classify_malformed_request_answers_422_naming_field(api: TestClient, kwargs: dict[str, Any], field: str) -> None:
    headers = {**bearer(CLASSIFY), **kwargs.pop("headers", {})}
    if "json" in kwargs:  # sent by hand so lone surrogates reach the server as JSON escapes
        kwargs["content"] = json.dumps(kwargs.pop("json")).encode()
        headers["content-type"] = "application/json"
    r = api.post("/v1/classify", headers=headers, **kwargs)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["field"] == field
    assert r.json()["status"] == 422


def test_classify_body_over_limit_answers_413(api: TestClient) -> None:
    big = json.dumps({"abstract": "x" * 2_100_000}).encode()
    r = api.post("/v1/classify", content=big, headers={**bearer(CLASSIFY), "content-type": "application/json"})
    assert r.status_code == 413
    assert r.json()["field"] == "body"


def test_classify_chunked_body_over_limit_answers_413(api: TestClient) -> None:
    def chunks() -> Any:
        for _ in range(30):
            yield b"x" * 100_000

    r = api.post("/v1/classify", content=chunks(), headers={**bearer(CLASSIFY), "content-type": "application/json"})
    assert r.status_code == 413
    assert r.json()["field"] == "body"


def test_classify_chunked_body_under_limit_answers(api: TestClient) -> None:
    data = json.dumps(QUANTUM).encode()

    def chunks() -> Any:
        yield data[:10]
        yield data[10:]

    r = api.post("/v1/classify", content=chunks(), headers={**bearer(CLASSIFY), "content-type": "application/json"})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(("path", "status"), [("/v1/nothing", 404), ("/v1/taxonomy", 405)])
def test_unknown_route_or_method_answers_problem(api: TestClient, path: str, status: int) -> None:
    r = api.post(path, json={}, headers=bearer(CLASSIFY))
    assert r.status_code == status
    assert r.headers["content-type"].startswith("application/problem+json")


# --- batch -------------------------------------------------------------------


def test_batch_bad_documents_get_own_errors(api: TestClient) -> None:
    documents = [
        {"id": "a", **QUANTUM},
        {"id": "b", "text": ""},
        {"text": "no id"},
        5,
        {"id": "c", "abstract": 1},
        {"id": "d", "abstract": "x", "color": "red"},
        {"id": "e", **HUMANITIES},
        {"id": "a", "text": "深層学習による画像認識"},
    ]
    r = api.post("/v1/classify/batch", json={"documents": documents}, headers=bearer(CLASSIFY))
    assert r.status_code == 200, r.text
    body = r.json()
    results = body["results"]
    assert [x["index"] for x in results] == list(range(len(documents)))
    assert [x.get("id") for x in results] == ["a", "b", None, None, "c", "d", "e", "a"]
    assert [x["status"] for x in results] == ["ok", "error", "error", "error", "error", "error", "ok", "ok"]
    assert (body["ok"], body["failed"]) == (3, 5)
    assert "quantum" in [d["id"] for d in results[0]["domains"]]
    assert results[6]["no_domain"] is True
    fields = [x["error"]["field"] for x in results if x["status"] == "error"]
    assert fields == ["documents[1]", "documents[2].id", "documents[3]", "documents[4].abstract", "documents[5].color"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"documents": [{"id": str(i), "text": "x"} for i in range(101)]}, "body.documents"),
        ({"documents": []}, "body.documents"),
        ({"documents": {"id": "a"}}, "body.documents"),
        ({"docs": []}, "body.documents"),
    ],
)
def test_batch_malformed_answers_422(api: TestClient, body: Any, field: str) -> None:
    r = api.post("/v1/classify/batch", json=body, headers=bearer(CLASSIFY))
    assert r.status_code == 422, r.text
    assert r.json()["field"] == field


def test_batch_answers_same_as_single(api: TestClient) -> None:
    single = api.post("/v1/classify", json=QUANTUM, headers=bearer(CLASSIFY)).json()
    batch = api.post("/v1/classify/batch", json={"documents": [{"id": "q", **QUANTUM}]}, headers=bearer(CLASSIFY)).json()
    assert batch["results"][0]["domains"] == single["domains"]
    assert batch["results"][0]["pillars"] == single["pillars"]


# --- taxonomy and models -------------------------------------------------------


def test_taxonomy_lists_labels_in_both_languages(api: TestClient) -> None:
    body = api.get("/v1/taxonomy", headers=bearer(CLASSIFY)).json()
    assert len(body["domains"]) == 17 and len(body["pillars"]) == 6
    assert body["domains"][12]["id"] == "quantum" and body["domains"][12]["ja"] == "量子" and body["domains"][12]["en"] == "Quantum"
    assert all(label["ja"] and label["en"] for label in body["domains"] + body["pillars"])


def test_models_list_and_show(api: TestClient, model_root: Path) -> None:
    body = api.get("/v1/models", headers=bearer(CLASSIFY)).json()
    active = (model_root / "ACTIVE").read_text().strip()
    assert body["active"] == active and body["loaded"] == active
    assert [v["version"] for v in body["versions"] if v["active"]] == [active]
    meta = api.get(f"/v1/models/{active}", headers=bearer(CLASSIFY)).json()
    assert meta["version"] == active and meta["active"] is True and "thresholds" in meta


@pytest.mark.parametrize(("version", "status"), [("19990101-000000-nothere", 404), ("..", 404), ("a b", 422), (".hidden", 422)])
def test_models_show_unknown_version(api: TestClient, version: str, status: int) -> None:
    r = api.get(f"/v1/models/{version}", headers=bearer(CLASSIFY))
    assert r.status_code == status, r.text


def test_models_activate_switches_served_model(model_root: Path, tmp_path: Path) -> None:
    from granttag.api import create_app

    root = tmp_path / "models"
    shutil.copytree(model_root, root)
    first = (root / "ACTIVE").read_text().strip()
    second = first + "-copy"
    shutil.copytree(root / first, root / second)
    client = TestClient(create_app(make_settings(root, tmp_path / "data")))
    assert client.post("/v1/classify", json=QUANTUM, headers=bearer(CLASSIFY)).json()["model_version"] == first
    assert client.put("/v1/models/active", json={"version": "no-such"}, headers=bearer(ADMIN)).status_code == 404
    r = client.put("/v1/models/active", json={"version": second}, headers=bearer(ADMIN))
    assert r.status_code == 200, r.text
    assert r.json()["active"] == second and r.json()["loaded"] == second
    assert client.post("/v1/classify", json=QUANTUM, headers=bearer(CLASSIFY)).json()["model_version"] == second
    # Activated elsewhere (the CLI, another API process): loaded in the background, then served.
    (root / "ACTIVE").write_text(first + "\n")
    served = []
    for _ in range(600):  # bounded: a switch that never happens fails the test
        served.append(client.post("/v1/classify", json=QUANTUM, headers=bearer(CLASSIFY)).json()["model_version"])
        if served[-1] == first:
            break
        time.sleep(0.05)
    assert served[-1] == first
    assert set(served) <= {first, second}


# --- feedback ------------------------------------------------------------------


def test_feedback_stored_durably_with_role(model_root: Path, tmp_path: Path) -> None:
    from classifier.feedback import feedback_path, load_feedback, read_feedback
    from granttag.api import create_app

    client = TestClient(create_app(make_settings(model_root, tmp_path)))
    body = {
        "document": {"id": "k-1", "title": "量子暗号通信", "abstract": "量子鍵配送の実装", "keywords": ["量子", "暗号"]},
        "domains": ["量子", "digital_cyber"],
        "pillars": ["Security"],
    }
    r = client.post("/v1/feedback", json=body, headers=bearer(ADMIN))
    assert r.status_code == 201, r.text
    assert r.json()["domains"] == ["digital_cyber", "quantum"] and r.json()["pillars"] == ["security"]
    stored = list(read_feedback(tmp_path))
    assert len(stored) == 1
    rec = stored[0]
    assert (rec["id"], rec["title"], rec["keywords"], rec["role"]) == ("k-1", "量子暗号通信", "量子; 暗号", "admin")
    assert rec["feedback_id"] == r.json()["feedback_id"] and rec["received_at"] == r.json()["received_at"]
    # A later correction of the same document supersedes the first for retraining.
    body["pillars"] = ["governance"]
    client.post("/v1/feedback", json=body, headers=bearer(ADMIN))
    labeled = load_feedback(tmp_path)
    assert len(labeled) == 1 and labeled.pillars == [["governance"]]
    # The file is in the training format: the core's training reader takes it as is.
    from classifier.corpus import load_labeled
    from classifier.taxonomy import load_taxonomy

    assert len(load_labeled([feedback_path(tmp_path)], load_taxonomy())) == 2


@pytest.mark.parametrize(
    ("domains", "pillars", "field"),
    [
        (["no_such_label"], ["security"], "domains[0]"),
        (["quantum", "security"], ["security"], "domains[1]"),
        ([], ["quantum"], "pillars[0]"),
        ([], [], "body.pillars"),
        ("quantum", ["security"], "body.domains"),
    ],
)
def test_feedback_bad_labels_answer_422(api: TestClient, domains: Any, pillars: Any, field: str) -> None:
    body = {"document": {"id": "d", "text": "量子"}, "domains": domains, "pillars": pillars}
    r = api.post("/v1/feedback", json=body, headers=bearer(ADMIN))
    assert r.status_code == 422, r.text
    assert r.json()["field"] == field


def test_feedback_concurrent_writers_keep_whole_lines(tmp_path: Path) -> None:
    from classifier.documents import Document
    from classifier.feedback import append_feedback, read_feedback

    long_text = "量子" * 20_000

    def write(n: int) -> None:
        for i in range(10):
            append_feedback(tmp_path, Document(id=f"{n}-{i}", abstract=long_text), [], ["science_renaissance"], "admin")

    threads = [threading.Thread(target=write, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    records = list(read_feedback(tmp_path))
    assert len(records) == 80
    assert len({r["feedback_id"] for r in records}) == 80
    assert all(r["abstract"] == long_text for r in records)


def test_feedback_reader_skips_torn_last_line(tmp_path: Path) -> None:
    from classifier.documents import Document
    from classifier.feedback import append_feedback, feedback_path, read_feedback

    append_feedback(tmp_path, Document(id="a", abstract="x"), [], ["governance"], "admin")
    with feedback_path(tmp_path).open("a", encoding="utf-8") as fh:
        fh.write('{"feedback_id": "torn", "id": "b", "abst')
    assert [r["id"] for r in read_feedback(tmp_path)] == ["a"]


# --- jobs ----------------------------------------------------------------------


def test_jobs_upload_starts_job_with_saved_file(api: TestClient) -> None:
    data = "id,title,abstract\n1,量子,量子誤り訂正\n2,農業,スマート農業\n".encode()
    r = api.post(
        "/v1/jobs", files={"file": ("projects.csv", data, "text/csv")}, data={"retag": "true", "id_col": "id"}, headers=bearer(CLASSIFY)
    )
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    source, retag = api.jobs.started[-1]  # type: ignore[attr-defined]
    assert retag is True
    assert source["kind"] == "file" and source["format"] == "csv" and source["columns"] == {"id": "id"}
    assert api.jobs.uploaded == data  # type: ignore[attr-defined]
    assert not Path(source["path"]).exists()  # the job keeps its records; the upload is removed
    status = api.get(f"/v1/jobs/{job_id}?offset=1&limit=5", headers=bearer(CLASSIFY)).json()
    assert (status["state"], status["total"], status["tagged"], status["failed"]) == ("running", 4, 2, 1)
    assert status["progress"] == 0.75
    assert [x["id"] for x in status["results"]] == ["r1", "r2"]
    assert job_id in [j["id"] for j in api.get("/v1/jobs", headers=bearer(CLASSIFY)).json()["jobs"]]
    r = api.delete(f"/v1/jobs/{job_id}", headers=bearer(CLASSIFY))
    assert r.status_code == 200 and r.json()["state"] == "cancelled"
    assert api.jobs.cancelled[-1] == job_id  # type: ignore[attr-defined]


def test_jobs_configured_source_starts_job(api: TestClient) -> None:
    r = api.post("/v1/jobs", json={"source": "kaken", "retag": True}, headers=bearer(ADMIN))
    assert r.status_code == 202, r.text
    assert r.json()["state"] == "running"
    assert api.jobs.started[-1] == (KAKEN_SOURCE, True)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("kwargs", "status", "field"),
    [
        ({"files": {"file": ("p.bin", b"id,text\n1,x\n", "application/octet-stream")}}, 422, "format"),
        ({"files": {"file": ("p.csv", b"", "text/csv")}}, 422, "file"),
        ({"data": {"retag": "true"}, "files": {"other": ("p.csv", b"x", "text/csv")}}, 422, "file"),
        ({"files": {"file": ("p.csv", b"id\n1\n", "text/csv")}, "data": {"retag": "maybe"}}, 422, "retag"),
        ({"files": {"file": ("p.csv", b"id\n1\n", "text/csv")}, "data": {"colour": "red"}}, 422, "colour"),
        ({"json": {"source": "nosuch"}}, 422, "body.source"),
        ({"json": {"source": {"kind": "database", "url": "sqlite:////etc/x.db"}}}, 422, "body.source"),
        ({"json": {"source": "kaken", "extra": 1}}, 422, "body.extra"),
        ({"content": b"id,text", "headers": {"content-type": "text/csv"}}, 422, "body"),
    ],
)
def test_jobs_bad_request_answers_422(api: TestClient, kwargs: dict[str, Any], status: int, field: str) -> None:
    headers = {**bearer(ADMIN), **kwargs.pop("headers", {})}
    r = api.post("/v1/jobs", headers=headers, **kwargs)
    assert r.status_code == status, r.text
    assert r.json()["field"] == field


def test_jobs_unknown_job_answers_problem(api: TestClient) -> None:
    r = api.get("/v1/jobs/nosuchjob", headers=bearer(CLASSIFY))
    assert r.status_code == 404, r.text
    assert "nosuchjob" in r.json()["detail"]


def test_jobs_without_queue_answer_503(model_root: Path, tmp_path: Path) -> None:
    from granttag.api import create_app

    client = TestClient(create_app(make_settings(model_root, tmp_path, api_queue_mode=False), jobs=FakeJobs()))
    r = client.post("/v1/jobs", files={"file": ("p.csv", b"id,text\n1,x\n", "text/csv")}, headers=bearer(ADMIN))
    assert r.status_code == 503


# --- health, readiness, metrics ----------------------------------------------------


def test_readyz_waits_for_model(model_root: Path, tmp_path: Path, redis13: Any) -> None:
    from granttag.api import create_app

    client = TestClient(create_app(make_settings(model_root, tmp_path)))  # no lifespan: nothing loaded yet
    assert client.get("/healthz").status_code == 200
    r = client.get("/readyz")
    assert r.status_code == 503 and "loading" in r.json()["detail"]
    client.app.state.holder.get()
    r = client.get("/readyz")
    assert r.status_code == 200 and r.json()["redis"] == "ok"


@pytest.mark.parametrize(("queue_mode", "status"), [(True, 503), (False, 200)])
def test_readyz_needs_redis_only_in_queue_mode(model_root: Path, tmp_path: Path, queue_mode: bool, status: int) -> None:
    from granttag.api import create_app

    dead = "redis://127.0.0.1:1/0"
    client = TestClient(create_app(make_settings(model_root, tmp_path, broker_url=dead, api_queue_mode=queue_mode)))
    client.app.state.holder.get()
    assert client.get("/readyz").status_code == status


def test_metrics_count_requests_documents_and_queue(api: TestClient, redis13: Any) -> None:
    def value(text: str, prefix: str) -> float:
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix))

    before = api.get("/metrics").text
    api.post("/v1/classify/batch", json={"documents": [{"id": "a", **QUANTUM}, {"id": "b", **HUMANITIES}]}, headers=bearer(CLASSIFY))
    redis13.rpush("celery", "t1", "t2", "t3")
    after = api.get("/metrics").text
    assert (
        value(after, 'granttag_documents_tagged_total{endpoint="batch"}')
        - value(before, 'granttag_documents_tagged_total{endpoint="batch"}')
        == 2
    )
    key = 'granttag_http_requests_total{method="POST",route="/v1/classify/batch",status="200"}'
    assert value(after, key) - value(before, key) == 1
    assert value(after, 'granttag_http_request_seconds_count{method="POST",route="/v1/classify/batch"}') >= 1
    assert value(after, 'granttag_queue_depth{queue="celery"}') == 3


def test_openapi_documents_every_endpoint(api: TestClient) -> None:
    spec = api.get("/openapi.json").json()
    for path in [
        "/v1/classify",
        "/v1/classify/batch",
        "/v1/jobs",
        "/v1/jobs/{job_id}",
        "/v1/taxonomy",
        "/v1/models",
        "/v1/models/{version}",
        "/v1/feedback",
        "/healthz",
        "/readyz",
        "/metrics",
    ]:
        assert path in spec["paths"], path
    assert spec["paths"]["/v1/classify"]["post"]["requestBody"]["content"]["application/json"]
    assert spec["components"]["schemas"]["DocumentIn"]["properties"]["abstract"]["anyOf"][0]["maxLength"] == 50_000
    assert api.get("/docs").status_code == 200


# --- the batcher -----------------------------------------------------------------


class _CountingModel:
    """The session model, counting predict calls."""

    def __init__(self, model: Any) -> None:
        self.model, self.calls, self.version = model, 0, model.version

    def predict(self, docs: list[Any], **opts: Any) -> list[Any]:
        self.calls += 1
        return self.model.predict(docs, **opts)


class _GatedHolder:
    """A model holder that answers only once the gate opens, so requests pile up meanwhile."""

    def __init__(self, model: Any) -> None:
        self.model, self.gate = model, threading.Event()

    def get(self) -> Any:
        self.gate.wait(60)
        return self.model


def test_batcher_concurrent_requests_answer_as_alone(model: Any) -> None:
    from classifier.documents import Document
    from granttag.api import Batcher

    texts = [QUANTUM["abstract"], HUMANITIES["abstract"], "深層学習による画像認識", "水田の収量予測", "津波の早期警報"]
    docs = [Document(id=str(i), abstract=t) for i, t in enumerate(texts * 4)]
    options = [(None, None, True), (0.5, None, False), (None, 1, True)]
    counting = _CountingModel(model)
    holder = _GatedHolder(counting)
    batcher = Batcher(holder, max_docs=64)  # type: ignore[arg-type]
    futures = [(doc, options[i % 3], batcher.submit([doc], *options[i % 3])) for i, doc in enumerate(docs)]
    holder.gate.set()
    for doc, (threshold, top_k, explain), future in futures:
        alone = model.predict([doc], threshold=threshold, top_k=top_k, explain=explain)[0].as_dict()
        assert future.result(timeout=60)[0].as_dict() == alone
    # Twenty requests with three option sets: the first alone, the rest in one predict call per option set.
    assert counting.calls <= 1 + len(options)
    batcher.close()


def test_batcher_model_error_reaches_every_request() -> None:
    from classifier.documents import Document
    from classifier.errors import ModelNotFoundError
    from granttag.api import Batcher

    class NoModel:
        def get(self) -> Any:
            raise ModelNotFoundError("no active model")

    batcher = Batcher(NoModel())  # type: ignore[arg-type]
    futures = [batcher.submit([Document(id=str(i), abstract="x")], None, None, True) for i in range(3)]
    for future in futures:
        with pytest.raises(ModelNotFoundError):
            future.result(timeout=60)
    batcher.close()


def test_classify_without_model_answers_503(tmp_path: Path) -> None:
    from granttag.api import create_app

    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "ACTIVE").write_text("19990101-000000-gone\n")  # names a version that is not there
    client = TestClient(create_app(make_settings(tmp_path / "models", tmp_path / "data")))
    r = client.post("/v1/classify", json=QUANTUM, headers=bearer(CLASSIFY))
    assert r.status_code == 503 and r.json()["title"] == "No model"
    r = client.post("/v1/classify/batch", json={"documents": [{"id": "a", **QUANTUM}]}, headers=bearer(CLASSIFY))
    assert r.status_code == 503
    assert client.get("/readyz").status_code == 503
