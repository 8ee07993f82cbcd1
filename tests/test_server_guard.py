"""The server as a hostile client meets it: size limits, payload shape, login throttling, no server
paths in what it says, gallery copies that go with their files, lost jobs said after a restart, Stop."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import free_port
from test_app import call_queued, controls

from studio.ui.app import API_ORDER, public
from studio.ui.guard import FREE_LOGIN_FAILURES, MAX_BODY_BYTES, LoginThrottle


def post(url, body: bytes, content_type="application/json", timeout=60):
    request = urllib.request.Request(url, data=body, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.fixture(scope="module")
def own_server(tmp_path_factory, cache_dir):
    """A server with its own folders (and a broken model file in its models folder)."""
    from studio.runtime import prepare_process, quiet_libraries
    from studio.settings import AppConfig
    from studio.ui.app import build_app
    from studio.ui.server import launch

    prepare_process()
    quiet_libraries()
    root = tmp_path_factory.mktemp("guarded")
    (root / "models").mkdir()
    (root / "models" / "broken.safetensors").write_bytes(b"\0" * 64)
    config = AppConfig(models_dir=root / "models", output_dir=root / "outputs", cache_dir=cache_dir)
    app = build_app(config, model="tiny")
    port = free_port()
    launch(app, "127.0.0.1", port, block=False, quiet=True)
    yield f"http://127.0.0.1:{port}/", config, app
    app.close()


def test_an_oversized_body_is_refused_before_it_is_read(own_server):
    """The 32 MB prompt of the report: refused from its headers, before a byte of the body is read."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(own_server[0] + "gradio_api/call/plan_preview")
    for length in (MAX_BODY_BYTES + 1, 32 << 20):
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
        connection.putrequest("POST", parts.path)
        connection.putheader("Content-Type", "application/json")
        connection.putheader("Content-Length", str(length))
        connection.endheaders()
        response = connection.getresponse()
        assert response.status == 413 and f"the request is {length} bytes".encode() in response.read()
        connection.close()


def test_a_body_without_a_length_is_cut_off_at_the_limit():
    """Chunked bodies declare no length: the guard counts while it reads and stops past the limit."""
    import asyncio

    from studio.ui.guard import Guard

    reached = []

    async def app(scope, receive, send):  # what would run the request: it must never be reached
        reached.append(scope["path"])

    chunks = [{"type": "http.request", "body": b"x" * (1 << 20), "more_body": True} for _ in range(40)]
    sent = []

    async def receive():
        return chunks.pop(0)

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/gradio_api/queue/join", "headers": []}
    asyncio.run(Guard(app)(scope, receive, send))
    assert sent[0]["status"] == 413 and not reached
    assert len(chunks) == 40 - 3  # read 3 MiB, not 40


@pytest.mark.parametrize("count", [5, len(API_ORDER) + 30])
def test_a_wrong_number_of_values_is_a_clear_refusal(own_server, count):
    status, body = post(own_server[0] + "gradio_api/call/plan_preview",
                        json.dumps({"data": (controls() * 3)[:count]}).encode())
    assert status == 422
    assert json.loads(body)["error"] == f"plan_preview takes {len(API_ORDER)} values, got {count}"


@pytest.mark.parametrize("overrides,needle", [
    (dict(seed=float("nan")), "Seed (-1 draws one) must be a finite number, got nan"),
    (dict(cfg=float("inf")), "Guidance scale (CFG) must be a finite number, got inf"),
    (dict(seed="abc"), 'Seed (-1 draws one) must be a number, got "abc"'),
    (dict(batch=True), "Image number must be a number, got true"),
    (dict(steps=None), "Steps must have a value, got null"),
    (dict(prompt=[1, 2]), "Prompt must be text, got [1, 2]"),
    (dict(deterministic="yes"), 'Deterministic mode must be true or false, got "yes"'),
    (dict(cfg={"a": 1}), 'Guidance scale (CFG) must be a number, got {"a": 1}'),
])
def test_values_of_the_wrong_type_are_named(own_server, overrides, needle):
    for api in ("plan_preview", "generate"):
        status, body = post(own_server[0] + f"gradio_api/call/{api}", json.dumps({"data": controls(**overrides)}).encode())
        assert status == 422 and json.loads(body)["error"] == f"{api}: {needle}", body


def test_no_server_path_in_what_a_remote_user_sees(own_server):
    url, config, _ = own_server
    root = str(config.output_dir.parent)
    kind, data = call_queued(url, "generate", controls(model="broken.safetensors", batch=1))
    assert kind == "complete" and "broken.safetensors" in data[1] and root not in data[1], data
    kind, data = call_queued(url, "save_preset", ["x" * 250, *controls()])
    assert kind == "complete" and "up to 100 letters" in data[0]
    kind, data = call_queued(url, "generate", controls(batch=1, steps=1))
    assert kind == "complete" and data[1] == "" and root not in data[2] and "/" not in data[2].split("·")[-1]
    kind, data = call_queued(url, "save_preset", ["mine", *controls()])
    assert kind == "complete" and data[0] == ""


def test_public_messages_keep_names_and_drop_server_paths():
    assert public("cannot read /srv/studio/models/x.safetensors: bad") == "cannot read x.safetensors: bad"
    assert public("in C:\\Users\\me\\models\\a.ckpt") == "in a.ckpt"
    assert public("weight 1/2 and (a:1.2) stay") == "weight 1/2 and (a:1.2) stay"
    assert public("folder /srv/out/ gone") == "folder … gone"


def test_login_throttle_doubles_the_wait_after_free_failures():
    now = [1000.0]
    throttle = LoginThrottle(clock=lambda: now[0])
    for _ in range(FREE_LOGIN_FAILURES):
        assert throttle.wait_s("1.2.3.4") == 0
        throttle.record("1.2.3.4", ok=False)
    waits = []
    for _ in range(4):
        waits.append(throttle.wait_s("1.2.3.4"))
        now[0] += waits[-1]
        throttle.record("1.2.3.4", ok=False)
    assert waits == [1, 2, 4, 8]
    assert throttle.wait_s("5.6.7.8") == 0  # another client is not held up
    throttle.record("1.2.3.4", ok=True)
    assert throttle.wait_s("1.2.3.4") == 0


def test_failed_logins_are_slowed_down_over_http(tmp_path, cache_dir):
    from studio.settings import AppConfig
    from studio.ui.app import build_app
    from studio.ui.server import launch

    app = build_app(AppConfig(models_dir=tmp_path / "m", output_dir=tmp_path / "o", cache_dir=cache_dir),
                    model="tiny")
    port = free_port()
    launch(app, "127.0.0.1", port, auth=[("ann", "right-password")], block=False, quiet=True)
    login = f"http://127.0.0.1:{port}/login"
    try:
        def attempt(password):
            return post(login, f"username=ann&password={password}".encode(), "application/x-www-form-urlencoded")

        codes = [attempt(f"guess{i}")[0] for i in range(FREE_LOGIN_FAILURES)]
        assert codes == [400] * FREE_LOGIN_FAILURES
        status, body = attempt("guess-again")
        assert status == 429 and b"too many failed logins" in body
        assert attempt("right-password")[0] == 429  # not even checked while the wait lasts
        time.sleep(1.1)
        assert attempt("right-password")[0] == 200
        assert attempt("guess")[0] == 400  # the record was cleared by the success
        # the pages and the API stay closed without the login cookie
        assert post(f"http://127.0.0.1:{port}/gradio_api/call/plan_preview",
                    json.dumps({"data": controls()}).encode())[0] in (401, 403)
    finally:
        app.close()


def test_a_gallery_copy_is_not_served_once_its_file_is_gone(own_server):
    from gradio_client import Client

    url, config, app = own_server
    client = Client(url, verbose=False, download_files=False)
    gallery, error, _, _ = client.predict(*controls(batch=1, steps=1, seed=77), api_name="/generate")[:4]
    assert error == ""
    copy_url = gallery[0]["image"]["url"]
    with urllib.request.urlopen(copy_url, timeout=30) as response:
        assert response.status == 200
    copies = list(Path(app.GRADIO_CACHE).glob("*/" + Path(gallery[0]["image"]["path"]).name))
    assert copies
    for saved in config.output_dir.glob("*_77.png"):
        saved.unlink()
    with pytest.raises(urllib.error.HTTPError) as gone:
        urllib.request.urlopen(copy_url, timeout=30)
    assert gone.value.code == 404
    assert not any(c.exists() for c in copies)


def test_a_closed_session_takes_its_gallery_copies_with_it(tmp_path):
    from studio.ui.gallery_copies import GalleryCopies

    out, cache = tmp_path / "out", tmp_path / "gradio"
    (out).mkdir()
    for folder, name in (("h1", "a.png"), ("h2", "b.png"), ("h3", "a.png")):
        (cache / folder).mkdir(parents=True)
        (cache / folder / name).write_bytes(b"png")
        (out / name).write_bytes(b"png")
    copies = GalleryCopies(out, cache)
    copies.shown("s1", [str(out / "a.png")])
    copies.shown("s2", [str(out / "b.png")])
    assert copies.end_session("s1") == 2
    assert sorted(p.parent.name for p in cache.rglob("*.png")) == ["h2"]  # s2's copy stays
    assert (out / "a.png").exists()  # the output itself is never touched


def test_stop_ends_the_run_and_leaves_nothing_behind(engine, tiny_request, tmp_path):
    from studio.engine.engine import Stopped

    plan = engine.plan(tiny_request(steps=6, batch=2, sampler="euler_a"))
    stop = threading.Event()

    def press_stop_at_3(done, total):
        if done == 3:
            stop.set()

    with pytest.raises(Stopped, match="stopped after step 3 of 12; nothing was saved"):
        engine.run(plan, on_step=press_stop_at_3, stop=stop)
    again = engine.run(plan, stop=threading.Event())
    from studio.engine.engine import Engine

    fresh = Engine(engine.config).run(plan)
    assert (again.images == fresh.images).all()  # the stopped run left nothing in the pipeline


def test_stop_over_http_stops_only_that_session(own_server):
    from gradio_client import Client

    url, config, _ = own_server
    before = set(config.output_dir.glob("*.png"))
    stopper, other = Client(url, verbose=False), Client(url, verbose=False)
    job = stopper.submit(*controls(steps=150, batch=1, seed=5), api_name="/generate")
    while job.status().code.name not in ("PROCESSING", "ITERATING", "PROGRESS"):
        time.sleep(0.1)
    other.predict(api_name="/stop")  # another session's Stop: no effect on this job
    time.sleep(2)
    assert not job.done(), "another session's Stop stopped this job"
    stopper.predict(api_name="/stop")
    _, error, _, _ = job.result(timeout=300)[:4]
    assert "stopped after step" in error and "nothing was saved" in error
    assert set(config.output_dir.glob("*.png")) == before


def test_the_api_takes_parameters_named_after_the_request_fields(own_server):
    from gradio_client import Client

    client = Client(own_server[0], verbose=False)
    names = [p["parameter_name"] for p in client.view_api(return_format="dict", print_info=False)
             ["named_endpoints"]["/generate"]["parameters"]]
    assert names == list(API_ORDER)
    # a script names only what it changes; the rest are the page's start values
    _, error, info, _ = client.predict(prompt="a red door", seed=31, steps=1, api_name="/generate")[:4]
    assert error == "" and "`31`" in info


def test_lost_jobs_are_said_after_a_kill(tmp_path, cache_dir):
    """A real server with queued jobs, killed with SIGKILL; the next start lists what it lost."""
    from gradio_client import Client

    port = free_port()
    out = tmp_path / "outputs"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "STUDIO_CACHE_DIR": str(cache_dir)}
    server = subprocess.Popen([sys.executable, "-c", "import sys; from studio.ui.server import main; "
                               "sys.exit(main(sys.argv[1:]))", "--port", str(port), "--output-dir", str(out),
                               "--models-dir", str(tmp_path / "models")], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}/"
        for _ in range(600):
            try:
                urllib.request.urlopen(url, timeout=5)
                break
            except OSError:
                time.sleep(0.2)
        clients = [Client(url, verbose=False) for _ in range(3)]
        jobs = [c.submit(*controls(steps=150, batch=1, seed=600 + i, prompt=f"lost job {i}"), api_name="/generate")
                for i, c in enumerate(clients)]
        while not (out / ".studio" / "jobs.jsonl").exists() or \
                (out / ".studio" / "jobs.jsonl").read_text().count('"queued"') < 3:
            time.sleep(0.2)
        server.send_signal(signal.SIGKILL)
        server.wait(timeout=60)
        for job in jobs:
            with pytest.raises(Exception):
                job.result(timeout=60)
    finally:
        server.kill()
    from studio.settings import AppConfig
    from studio.ui.app import build_app, lost_jobs_markdown

    app = build_app(AppConfig(models_dir=tmp_path / "models", output_dir=out, cache_dir=cache_dir), model="tiny")
    lost = app.studio_parts.lost
    assert sorted(j["seed"] for j in lost) == [600, 601, 602]
    assert {j["prompt"] for j in lost} == {"lost job 0", "lost job 1", "lost job 2"}
    assert "3 queued job(s) were lost" in lost_jobs_markdown(lost)
    assert json.loads((out / ".studio" / "lost-jobs.json").read_text()) == lost
    # said once: a second start has nothing lost
    assert build_app(AppConfig(models_dir=tmp_path / "models", output_dir=out, cache_dir=cache_dir),
                     model="tiny").studio_parts.lost == []
