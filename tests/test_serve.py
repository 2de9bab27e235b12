"""``mot serve``: the playground's API against the library it serves.

The streamed texts must be ``mot think``'s (the same library call, and the CLI itself for the
shipped model), bad input must get a one-line 4xx JSON error, the queue must be bounded (429), and
a client that goes away must free the worker. Streaming tests use Starlette's TestClient; the
concurrency and disconnect tests a real uvicorn server on 127.0.0.1.
"""

from __future__ import annotations

import json
import re
import threading
import time

import pytest
import torch

from test_serve_support import live_server, serve_models_dir, served, sse_events

FIXTURES = (serve_models_dir, served)  # the shared fixtures this module uses

httpx = pytest.importorskip("httpx")
from starlette.testclient import TestClient  # noqa: E402

from mixture_of_thoughts.generation.autoregressive import think  # noqa: E402
from mixture_of_thoughts.serve.app import STATIC, create_app  # noqa: E402
from mixture_of_thoughts.serve.params import Limits  # noqa: E402
from mixture_of_thoughts.serve.worker import Job, Worker  # noqa: E402

WAIT = 60.0  # seconds a test waits for the server before failing (never a timing assertion)


@pytest.fixture
def client(served):
    app = create_app(served, limits=Limits(max_branches=8, max_tokens=300, max_prompt=100),
                     worker=Worker(threads=1, max_pending=4))
    with TestClient(app) as c:
        yield c


def post_events(client, mode: str, body: dict) -> list[tuple[str, dict]]:
    r = client.post(f"/api/{mode}", json=body)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/event-stream")
    return sse_events(r.text)


def streamed_texts(events) -> list[str]:
    steps = [d for e, d in events if e == "step"]
    return ["".join(d["text"][b] for d in steps) for b in range(len(steps[0]["text"]))]


# ----------------------------------------------------------------------------- think

def test_think_streams_token_by_token_the_texts_of_think(client, served):
    m = served["tiny-mot"]
    body = {"model": "tiny-mot", "prompt": "the cat", "branches": 3, "creativity": "0.5:1.5", "max_tokens": 24,
            "seed": 5, "temperature": 0.9}
    events = post_events(client, "think", body)
    names = [e for e, _ in events]
    assert names[0] == "start" and names[-1] == "result" and names.count("step") == 24
    start, result = events[0][1], events[-1][1]
    assert start["seeds"] == [5, 6, 7] and start["creativity"] == [0.5, 1.0, 1.5]
    ref = think(m.model, m.tokenizer, "the cat", branches=3, seed=5, creativity=(0.5, 1.5), max_new_tokens=24,
                temperature=0.9)
    assert streamed_texts(events) == [b.text for b in ref.branches]
    assert [b["text"] for b in result["branches"]] == [b.text for b in ref.branches]
    for got, want in zip(result["branches"], ref.branches, strict=True):
        assert got["mean_loglik"] == pytest.approx(want.mean_loglik, abs=1e-6)
        assert {int(k): v for k, v in got["routing"].items()} == want.routing
    last = [d for e, d in events if e == "step"][-1]
    assert last["loglik"] == pytest.approx([b.mean_loglik for b in ref.branches], abs=1e-5)  # running mean
    assert result["diversity"]["self_bleu"] == pytest.approx(ref.diversity["self_bleu"])


def test_think_routes_each_token_through_k_branches_per_layer(client):
    events = post_events(client, "think", {"model": "tiny-mot", "prompt": "the", "branches": 2, "max_tokens": 10})
    steps = [d for e, d in events if e == "step"]
    assert steps[0]["route"] is None  # the first step read the prompt, not a generated token
    for d in steps[1:]:
        assert set(d["route"]) == {"0", "1"}
        for layer in d["route"].values():
            assert len(layer) == 2 and all(len(es) == 2 and all(0 <= e < 4 for e in es) for es in layer)


def test_shipped_model_page_equals_the_mot_think_command(client, capsys):
    from mixture_of_thoughts.cli import main

    assert main(["think", "--prompt", "ROMEO:", "--branches", "3", "--creativity", "0.5:1.5",
                 "--max-new-tokens", "30", "--seed", "1", "--device", "cpu", "--json"]) == 0
    cli = json.loads(capsys.readouterr().out)
    events = post_events(client, "think", {"model": "shakespeare-mot", "prompt": "ROMEO:", "branches": 3,
                                           "creativity": "0.5:1.5", "max_tokens": 30, "seed": 1})
    assert streamed_texts(events) == [b["text"] for b in cli["branches"]]
    assert events[-1][1]["branches"] == cli["branches"]


def test_one_branch_regenerated_alone_from_its_seed_is_the_same(client):
    body = {"model": "tiny-mot", "prompt": "the", "branches": 3, "creativity": "0:2", "max_tokens": 20, "seed": 3}
    batch = post_events(client, "think", body)[-1][1]["branches"]
    b = batch[2]
    alone = post_events(client, "think", {**body, "branch_seeds": [b["seed"]], "creativity": b["creativity"]})
    assert alone[0][1]["seeds"] == [b["seed"]]
    assert alone[-1][1]["branches"][0]["text"] == b["text"]


# ----------------------------------------------------------------------------- diffusion

def test_diffuse_streams_the_denoising_from_masks_to_text(client, served):
    from mixture_of_thoughts.generation.denoise_search import branch_search
    from mixture_of_thoughts.serve.generate import MASK

    m = served["tiny-diff"]
    events = post_events(client, "diffuse", {"model": "tiny-diff", "prompt": "the", "branches": 2, "length": 24,
                                             "seed": 2, "sampler": "topk", "steps": 6})
    frames = [d for e, d in events if e == "frame"]
    assert [f["step"] for f in frames] == list(range(7))  # the input, then each of the 6 steps
    assert all(r.startswith("the") and r[3:] == MASK * 21 for r in frames[0]["rows"])
    masks = [sum(r.count(MASK) for r in f["rows"]) for f in frames]
    assert masks == sorted(masks, reverse=True) and masks[-1] == 0
    ref = branch_search(m.model, m.tokenizer, "the", length=24, branches=2, seed=2, sampler="topk", steps=6)
    got = events[-1][1]
    assert [(b["seed"], b["text"]) for b in got["branches"]] == [(b.seed, b.text) for b in ref.branches]
    by_seed = {b.seed: b.text for b in ref.branches}
    assert [r[3:] for r in frames[-1]["rows"]] == [by_seed[2], by_seed[3]]


def test_diffuse_with_keep_ranks_the_kept_and_forked_branches_as_mot_diffuse(client, served):
    from mixture_of_thoughts.generation.denoise_search import branch_search

    m = served["tiny-diff"]
    events = post_events(client, "diffuse", {"model": "tiny-diff", "prompt": "the", "branches": 3, "length": 20,
                                             "seed": 0, "keep": 1, "sampler": "topk", "steps": 4})
    ref = branch_search(m.model, m.tokenizer, "the", length=20, branches=3, keep=1, seed=0, sampler="topk", steps=4)
    got = events[-1][1]["branches"]
    assert [(b["seed"], b["parent_seed"], b["text"]) for b in got] == [(b.seed, b.parent_seed, b.text)
                                                                       for b in ref.branches]
    assert any(b["parent_seed"] is not None for b in got)


def test_renoise_streams_variants_of_the_text(client, served):
    from mixture_of_thoughts.generation.denoise_search import renoise

    m = served["tiny-diff"]
    text = "the cat sat on a red dot."
    events = post_events(client, "renoise", {"model": "tiny-diff", "text": text, "noise": 0.5, "variants": 3,
                                             "seed": 4})
    ref = renoise(m.model, m.tokenizer, text, noise=0.5, variants=3, seed=4)
    got = events[-1][1]
    assert got["variants"] == [v.__dict__ for v in ref.variants]
    frames = [d for e, d in events if e == "frame"]
    assert frames[0]["rows"][0].count("\u0000") == round(0.5 * len(text))
    assert frames[-1]["rows"] == [v.text for v in ref.variants]
    assert set(got["diversity"]) == {"distinct_2", "distinct_3", "self_bleu"}


# ----------------------------------------------------------------------------- bad input

BAD = [
    ("think", {"prompt": "the €"}, 400, "outside the model's vocabulary"),
    ("think", {"prompt": ""}, 400, "empty"),
    ("think", {"prompt": "a" * 101}, 400, "limit of 100"),
    ("think", {"branches": 9}, 400, "branches must be in [1, 8]"),
    ("think", {"max_tokens": 301}, 400, "max_tokens must be in [1, 300]"),
    ("think", {"model": "nope"}, 404, "unknown model 'nope'"),
    ("think", {"model": "../../etc/passwd"}, 404, "unknown model"),
    ("think", {"model": "tiny-diff"}, 400, "needs an autoregressive model"),
    ("think", {"creativity": "lots"}, 400, "creativity must be"),
    ("think", {"temperature": -1}, 400, "temperature must be in"),
    ("think", {"branches": "3"}, 400, "branches must be an integer"),
    ("diffuse", {"model": "tiny-mot"}, 400, "needs a diffusion model"),
    ("diffuse", {"model": "tiny-diff", "sampler": "magic"}, 400, "sampler must be one of"),
    ("diffuse", {"model": "tiny-diff", "prompt": "the cat", "length": 5}, 400, "at least the prompt length"),
    ("renoise", {"model": "tiny-diff", "text": "the €"}, 400, "outside the model's vocabulary"),
    ("renoise", {"model": "tiny-diff", "text": "the", "noise": 2}, 400, "noise must be in [0.0, 1.0]"),
    ("nothing", {}, 404, "no endpoint"),
]


@pytest.mark.parametrize("mode,change,status,needle", BAD)
def test_bad_input_is_a_one_line_json_error(client, mode, change, status, needle):
    body = {"model": "tiny-mot", "prompt": "the", "branches": 2, "max_tokens": 5, **change}
    r = client.post(f"/api/{mode}", json=body)
    assert r.status_code == status
    err = r.json()["error"]
    assert needle in err and "\n" not in err and "Traceback" not in r.text


def test_a_body_that_is_not_a_json_object_is_refused(client):
    assert client.post("/api/think", content=b"{not json").status_code == 400
    assert client.post("/api/think", content=b"\xff\xfe").status_code == 400
    assert client.post("/api/think", content=b" " * (70 * 1024)).status_code == 413
    assert "JSON object" in client.post("/api/think", json=[1, 2]).json()["error"]


def test_the_queue_is_bounded_and_answers_429(served):
    worker = Worker(threads=1, max_pending=1)
    release = threading.Event()
    try:
        with TestClient(create_app(served, worker=worker)) as c:
            blocker = Job(lambda job: release.wait(WAIT), None)
            blocker.emit = lambda event, data: None  # no client listens to this one
            worker.submit(blocker)
            r = c.post("/api/think", json={"model": "tiny-mot", "prompt": "the", "branches": 1, "max_tokens": 2})
            assert r.status_code == 429 and "busy" in r.json()["error"]
            release.set()
            deadline = time.monotonic() + WAIT
            while worker.stats()["pending"] and time.monotonic() < deadline:
                time.sleep(0.01)
            r = c.post("/api/think", json={"model": "tiny-mot", "prompt": "the", "branches": 1, "max_tokens": 2})
            assert r.status_code == 200 and sse_events(r.text)[-1][0] == "result"
    finally:
        release.set()


# ----------------------------------------------------------------------------- a real server

def read_stream(base: str, body: dict) -> list[tuple[str, dict]]:
    with httpx.Client(timeout=WAIT) as h:
        r = h.post(f"{base}/api/think", json=body)
        assert r.status_code == 200, r.text
        return sse_events(r.text)


def test_eight_concurrent_clients_all_complete(served):
    app = create_app(served, worker=Worker(threads=1, max_pending=16))
    results: dict[int, list] = {}
    with live_server(app) as base:
        def client(i: int) -> None:
            results[i] = read_stream(base, {"model": "tiny-mot", "prompt": "the", "branches": 2, "max_tokens": 12,
                                            "seed": 10 * i})

        threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(WAIT)
        assert httpx.get(f"{base}/api/status").json()["finished"] == 8
    m = served["tiny-mot"]
    for i in range(8):
        assert results[i][-1][0] == "result"
        ref = think(m.model, m.tokenizer, "the", branches=2, seed=10 * i, max_new_tokens=12)
        assert [b["text"] for b in results[i][-1][1]["branches"]] == [b.text for b in ref.branches]


def test_a_client_that_disconnects_frees_the_worker(served):
    app = create_app(served, limits=Limits(max_tokens=100_000), worker=Worker(threads=1, max_pending=4))
    long = {"model": "tiny-mot", "prompt": "the", "branches": 8, "max_tokens": 100_000}
    with live_server(app) as base, httpx.Client(timeout=WAIT) as h:
        with h.stream("POST", f"{base}/api/think", json=long) as r:
            lines = r.iter_lines()
            while not next(lines).startswith("event: step"):
                pass  # generation has started
        # the connection is closed: the job stops at its next model call and the thread is free again
        deadline = time.monotonic() + WAIT
        while (s := h.get(f"{base}/api/status").json())["cancelled"] < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert s["cancelled"] == 1 and s["finished"] == 0 and s["running"] == 0 and s["pending"] == 0
        r = h.post(f"{base}/api/think", json={**long, "max_tokens": 3})
        assert r.status_code == 200 and sse_events(r.text)[-1][0] == "result"


# ----------------------------------------------------------------------------- the page and its assets

def test_the_page_and_its_assets_come_from_the_package_only(client):
    r = client.get("/")
    assert r.status_code == 200 and "default-src 'self'" in r.headers["content-security-policy"]
    refs = re.findall(r'(?:src|href)="([^"]+)"', r.text)
    assert refs and all(ref.startswith("/static/") for ref in refs)
    for ref in refs:
        assert client.get(ref).status_code == 200
    for f in STATIC.iterdir():
        text = f.read_text(encoding="utf-8").replace('xmlns="http://www.w3.org/2000/svg"', "")  # a name, not a URL
        assert not re.search(r"https?://", text), f"{f.name} names an outside URL"
        assert not re.search(r"\bstyle=", text), f"{f.name} has an inline style, which the page's CSP refuses"
    assert client.get("/static/../params.py").status_code == 404
    models = client.get("/api/models").json()
    assert [m["name"] for m in models["models"]] == ["shakespeare-mot", "tiny-mot", "tiny-diff"]


def test_only_loopback_host_names_are_accepted_when_asked(served):
    app = create_app(served, allowed_hosts=["127.0.0.1", "localhost"])
    with TestClient(app, base_url="http://127.0.0.1") as c:
        assert c.get("/api/models").status_code == 200
        assert c.get("/api/models", headers={"host": "evil.example"}).status_code == 400


def test_mot_serve_is_a_command_with_help(capsys):
    from mixture_of_thoughts.cli import main

    with pytest.raises(SystemExit) as e:
        main(["serve", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--host" in out and "127.0.0.1" in out and "--model" in out


def test_a_bad_model_on_the_command_line_is_a_one_line_error(capsys, tmp_path):
    from mixture_of_thoughts.cli import main

    f = tmp_path / "weights.bin"
    f.write_bytes(b"x")
    assert main(["serve", "--model", str(f)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mot: error:") and "Traceback" not in err


def test_think_with_a_dense_model_sends_no_routes(tmp_path, tokenizer, tiny_model):
    from mixture_of_thoughts.serve.models import load_models
    from mixture_of_thoughts.training.checkpoint import save_checkpoint

    save_checkpoint(tmp_path / "dense", tiny_model, tokenizer, objective="ar")
    models = load_models([str(tmp_path / "dense")], device="cpu", include_shipped=False)
    with TestClient(create_app(models)) as c:
        events = post_events(c, "think", {"model": "dense", "prompt": "the", "branches": 2, "max_tokens": 6})
    assert events[0][1]["creativity"] is None and all(d["route"] is None for e, d in events if e == "step")
    ref = think(tiny_model, tokenizer, "the", branches=2, max_new_tokens=6)
    assert streamed_texts(events) == [b.text for b in ref.branches]
    torch.testing.assert_close(torch.tensor(events[-1][1]["branches"][0]["mean_loglik"]),
                               torch.tensor(ref.branches[0].mean_loglik))


def test_think_with_a_grafted_hugging_face_model_streams_think_hf(make_tiny_llama, hf_tokenizer):
    from mixture_of_thoughts.hf.generate import think_hf
    from mixture_of_thoughts.hf.graft import graft
    from mixture_of_thoughts.serve.models import ServedModel

    model = graft(make_tiny_llama(len(hf_tokenizer)), "all")
    m = ServedModel("tiny-llama", "hf", model, hf_tokenizer, "test", [0, 1], 4)
    body = {"model": "tiny-llama", "prompt": "the cat", "branches": 3, "creativity": "0:2", "max_tokens": 12,
            "seed": 2}
    with TestClient(create_app({"tiny-llama": m})) as c:
        events = post_events(c, "think", body)
    ref = think_hf(model, hf_tokenizer, "the cat", branches=3, seed=2, creativity=(0.0, 2.0), max_new_tokens=12,
                   chat=False)
    assert streamed_texts(events) == [b.text for b in ref.branches]
    assert [b["text"] for b in events[-1][1]["branches"]] == [b.text for b in ref.branches]
    routes = [d["route"] for e, d in events if e == "step"][1:]
    assert routes and all(set(r) == {"0", "1"} and all(len(es) == 2 for es in r["0"]) for r in routes)


def test_semantic_diversity_is_added_with_an_embedder(served):
    import numpy as np

    class OneHot:  # every text its own direction: distance 1, Vendi N (no model needed)
        def embed(self, texts):
            return np.eye(len(texts), 8)

    with TestClient(create_app(served, embedder=OneHot())) as c:
        events = post_events(c, "think", {"model": "tiny-mot", "prompt": "the", "branches": 3, "max_tokens": 5})
    d = events[-1][1]["diversity"]
    assert d["semantic_distance"] == pytest.approx(1.0) and d["vendi_semantic"] == pytest.approx(3.0)
    assert {"distinct_2", "distinct_3", "self_bleu"} <= set(d)


def test_mot_serve_binds_loopback_and_wires_its_flags(monkeypatch, serve_models_dir):
    import uvicorn

    from mixture_of_thoughts.cli import main

    ran = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: ran.update(app=app, **kw))
    assert main(["serve", "--model", str(serve_models_dir["diffusion"]), "--max-branches", "3", "--max-queue", "2",
                 "--device", "cpu"]) == 0
    assert (ran["host"], ran["port"]) == ("127.0.0.1", 7860)
    with TestClient(ran["app"], base_url="http://127.0.0.1:7860") as c:
        info = c.get("/api/models").json()
        assert [m["name"] for m in info["models"]] == ["shakespeare-mot", "tiny-diff"]
        assert info["limits"]["max_branches"] == 3 and c.get("/api/status").json()["max_pending"] == 2
        assert c.get("/", headers={"host": "attacker.example"}).status_code == 400  # DNS rebinding
