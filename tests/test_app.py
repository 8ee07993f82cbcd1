"""The app as users reach it: a real Gradio server on 127.0.0.1, driven through its HTTP API."""

import pytest

from studio.ui.server import main as serve


def controls(**overrides):
    from studio.ui.app import API_ORDER

    values = dict(prompt="a lighthouse at dusk", negative_prompt="", seed=321, seed_mode="increment", batch=2,
                  performance="Custom", steps=3, cfg=7.0, sampler="euler_a", width=64, height=64, model="tiny", noise_source="cpu",
                  deterministic=False, text_dtype="fp32", unet_dtype="fp32", vae_dtype="fp32", expansion=False,
                  backend="torch", device="cpu", ov_mode="accuracy", text_encoder="torch", ov_weights="full", compile="none",
                  chunk_policy="exact",
                  clip_skip=1, styles=[], image_mode="vary-subtle", strength=0, mask_blur=0, inpaint_area="whole",
                  masked_padding=32, input_image=False, uov_image=None, inpaint_image=None, mask_image=None,
                  outpaint_sides=[], outpaint_pixels=128)
    for slot in range(1, 6):  # the LoRA slots, as the page starts: on, empty, weight 1
        values.update({f"lora_{slot}_enabled": True, f"lora_{slot}_name": "None", f"lora_{slot}_weight": 1.0})
    values.update(overrides)
    return [values[name] for name in API_ORDER]


def test_generate_through_the_server(server, config):
    from gradio_client import Client

    client = Client(server, verbose=False)
    gallery, error, info, next_seed = client.predict(*controls(), api_name="/generate")[:4]
    assert error == ""
    assert len(gallery) == 2
    assert "`321`" in info and "`322`" in info
    assert next_seed == 323  # increment mode moves past the batch
    saved = sorted(p.name for p in config.output_dir.iterdir() if p.suffix == ".png")
    assert any(name.endswith("_321.png") for name in saved)


def test_bad_input_is_a_visible_message(server):
    from gradio_client import Client

    client = Client(server, verbose=False)
    _, error, _, _ = client.predict(*controls(width=65), api_name="/generate")[:4]
    assert "error: width: 65 must be a multiple of 8" in error


def test_plan_preview_shows_risks_and_fingerprints_before_generate(server):
    from gradio_client import Client

    from studio.engine import noise

    client = Client(server, verbose=False)
    error, plan = client.predict(*controls(seed=42, batch=1), api_name="/plan_preview")
    assert error == ""
    expected = noise.image_fingerprints(noise.initial_latents(noise.make_generators([42], "cpu"), (4, 32, 32), "cpu"))
    assert f"`42` · `{expected[0]}`" in plan
    assert "No reproducibility risks" in plan
    _, risky = client.predict(*controls(vae_dtype="bf16", sampler="euler_a-gpu"), api_name="/plan_preview")
    assert "vae_not_fp32" in risky and "device_noise" in risky and "from the -gpu sampler name" in risky
    error, _ = client.predict(*controls(unet_dtype="fp16"), api_name="/plan_preview")
    assert "fp16 is not supported on CPU" in error


def test_performance_fast_modes_through_the_api(server):
    from gradio_client import Client

    client = Client(server, verbose=False)
    error, _ = client.predict(*controls(performance="Extreme Speed"), api_name="/plan_preview")
    # (the page names the folder without the server's path)
    assert ("error: Extreme Speed needs the LCM LoRA lcm-lora-sdv1-5.safetensors in loras: copy it there (nothing is "
            "downloaded)") in error
    error, _ = client.predict(*controls(performance="Lightning"), api_name="/plan_preview")
    assert "Lightning has no Lightning LoRA for SD1 models" in error
    with pytest.raises(Exception, match="'Turbo'.* is not in the list of choices"):  # Gradio's radio refuses it
        client.predict(*controls(performance="Turbo"), api_name="/plan_preview")


def test_plan_preview_flags_a_recompile(server):
    from gradio_client import Client

    client = Client(server, verbose=False)
    ov = dict(backend="openvino", device="CPU", seed=5, batch=1)
    client.predict(*controls(**ov), api_name="/generate")  # compiles 64×64, one chunk
    _, cached = client.predict(*controls(**ov), api_name="/plan_preview")
    assert "Compiled variant cached" in cached
    _, longer = client.predict(*controls(prompt=" ".join(["cat"] * 80), **ov), api_name="/plan_preview")
    assert "Will compile" in longer and "prompt crossed 75 tokens: chunks 1→2" in longer
    _, near = client.predict(*controls(prompt=" ".join(["cat"] * 70), **ov), api_name="/plan_preview")
    assert "5 tokens to the next 75-token boundary" in near
    _, one = client.predict(*controls(prompt=" ".join(["cat"] * 74), **ov), api_name="/plan_preview")
    assert "⚠️ 1 token to the next 75-token boundary" in one
    _, padded = client.predict(*controls(prompt=" ".join(["cat"] * 74), chunk_policy="pad:2", **ov),
                               api_name="/plan_preview")
    assert "chunk policy pads the prompt (1 chunk) to 2 chunks" in padded and "crossed" not in padded
    _, bigger = client.predict(*controls(width=96, **ov), api_name="/plan_preview")
    assert "resolution 64×64→96×64" in bigger
    # the OpenVINO text-encoder radio: said in the plan; with the torch backend it does not apply
    _, text_ov = client.predict(*controls(text_encoder="openvino", **ov), api_name="/plan_preview")
    assert "openvino on CPU (text encoder too)" in text_ov
    error, torch_plan = client.predict(*controls(text_encoder="openvino"), api_name="/plan_preview")
    assert error == "" and "torch on cpu ·" in torch_plan


def test_token_counter_endpoint(server):
    from gradio_client import Client

    client = Client(server, verbose=False)
    assert client.predict(" ".join(["cat"] * 80), api_name="/token_label") == "80/150 · 2 chunks"


def test_share_without_auth_is_refused(capsys):
    assert serve(["--share"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --share makes the app public") and len(err.splitlines()) == 1


def test_bad_auth_is_refused(capsys):
    assert serve(["--auth", "nopassword"]) == 2
    assert capsys.readouterr().err.startswith("error: auth must be user:pass")


def test_default_bind_is_loopback():
    from studio.ui.server import build_parser

    assert build_parser().parse_args([]).listen == "127.0.0.1"
    assert build_parser().parse_args(["--listen"]).listen == "0.0.0.0"
    assert build_parser().parse_args([]).port == 7865


def test_opening_a_preset_fills_the_controls_and_reports(server, tmp_path):
    import json

    from gradio_client import Client, handle_file

    from studio.ui.app import API_ORDER

    client = Client(server, verbose=False)
    out = client.predict("reproducible", None, api_name="/open_preset")
    values = dict(zip(API_ORDER, out[:len(API_ORDER)]))
    error, report = out[len(API_ORDER):]
    assert error == "" and values["sampler"] == "euler_a" and values["deterministic"] is True
    assert values["seed"] == 12345 and values["noise_source"] == "cpu"
    assert (values["width"], values["height"]) == (64, 64)  # no size in the preset: the tiny model's own
    assert "expected: the same image" in report
    there = {"schema_version": 1, "model": {"file": "tiny", "sha256": "0" * 64},
             "request": {"seed": 1, "expansion": True, "expanded_prompt": "a cat, film grain"}}
    path = tmp_path / "other.json"
    path.write_text(json.dumps(there))
    out = client.predict(None, handle_file(str(path)), api_name="/open_preset")
    values = dict(zip(API_ORDER, out[:len(API_ORDER)]))
    error, report = out[len(API_ORDER):]
    assert values["prompt"] == "a cat, film grain" and values["expansion"] is False  # replayed verbatim
    assert "expected: a different image" in report and "model.sha256" in report
    path.write_text(json.dumps({"schema_version": 9}))
    error = client.predict(None, handle_file(str(path)), api_name="/open_preset")[len(API_ORDER)]
    assert "schema_version 9" in error and "update studio" in error


def test_a_batch_preset_replays_its_expanded_texts(server, tmp_path):
    import json

    from gradio_client import Client, handle_file

    from studio.ui.app import API_ORDER

    texts = ["a cat, first words", "a cat, second words"]
    path = tmp_path / "batch.json"
    path.write_text(json.dumps({"schema_version": 1, "model": {"file": "tiny"},
                                "request": {"prompt": "a cat", "seed": 3, "batch": 2, "steps": 2, "width": 64,
                                            "height": 64, "sampler": "euler", "expansion": True,
                                            "expanded_prompt": texts}}))
    client = Client(server, verbose=False)
    out = client.predict(None, handle_file(str(path)), api_name="/open_preset")
    values = dict(zip(API_ORDER, out[:len(API_ORDER)]))
    assert out[len(API_ORDER)] == ""
    assert values["prompt"] == "a cat" and values["expansion"] is True and values["batch"] == 2
    _, error, info, _ = client.predict(*[values[n] for n in API_ORDER], api_name="/generate")[:4]
    assert error == ""
    assert "`3` expanded prompt: a cat, first words" in info and "`4` expanded prompt: a cat, second words" in info
    # another seed: the stored texts no longer belong to the settings, expansion runs anew
    _, plan = client.predict(*[{**values, "seed": 5}[n] for n in API_ORDER], api_name="/plan_preview")
    assert "seeded by each image's seed" in plan and "first words" not in plan


def test_app_starts_from_a_preset(config):
    from studio.ui.app import build_app

    app = build_app(config, preset="reproducible")
    values = {getattr(b, "elem_id", None): getattr(b, "value", None) for b in app.blocks.values()}
    assert values["sampler"] == "euler_a" and values["seed"] == 12345 and values["deterministic"] is True


def test_saving_a_preset_from_the_app(server, config):
    import json

    from gradio_client import Client

    client = Client(server, verbose=False)
    error, path = client.predict("shared look", *controls(seed=77, sampler="heun"), api_name="/save_preset")
    assert error == ""
    saved = json.loads((config.output_dir / "presets" / "shared look.json").read_text())
    assert saved["request"]["seed"] == 77 and saved["request"]["sampler"] == "heun"
    assert saved["made_on"]["torch"] and saved["model"]["sha256"]
    error, _ = client.predict("../escape", *controls(), api_name="/save_preset")
    assert "name the preset" in error
    assert not (config.output_dir.parent / "escape.json").exists()


def test_direct_api_posts_are_refused_only_the_queue_runs(server):
    import json
    import urllib.error
    import urllib.request

    for route in ("gradio_api/api/generate", "gradio_api/run/generate", "gradio_api/api/plan_preview"):
        request = urllib.request.Request(server + route, data=json.dumps({"data": controls(batch=1)}).encode(),
                                         headers={"Content-Type": "application/json"})
        try:
            urllib.request.urlopen(request, timeout=60)
            raise AssertionError(f"{route} ran a job outside the queue")
        except urllib.error.HTTPError as exc:
            assert exc.code == 404 and b"join the queue" in exc.read(), route


def test_queued_jobs_at_once_each_equal_their_seed_run_alone(server, engine, config):
    import json
    import re

    import numpy as np
    from gradio_client import Client
    from PIL import Image

    from studio.metadata.png import read_text_chunks
    from studio.settings import build_request

    samplers = ["euler", "euler_a", "dpmpp_2m", "heun"]
    clients = [Client(server, verbose=False) for _ in samplers]
    jobs = [client.submit(*controls(seed=900 + i, batch=1, sampler=s, seed_mode="fixed"), api_name="/generate")
            for i, (client, s) in enumerate(zip(clients, samplers))]
    for i, (job, sampler) in enumerate(zip(jobs, samplers)):
        _, error, info, _ = job.result(timeout=300)[:4]
        assert error == "", error
        seed, shown = re.search(r"`(\d+)` · noise `\w+` · (\S+\.png)", info).groups()
        assert int(seed) == 900 + i and not shown.startswith("/")  # relative to the output folder
        path = config.output_dir / shown
        alone = engine.run(engine.plan(build_request(
            prompt="a lighthouse at dusk", seed=900 + i, steps=3, cfg=7.0, sampler=sampler, width=64, height=64,
            model="tiny")))
        saved = Image.open(path)
        np.testing.assert_array_equal(np.asarray(saved.convert("RGB")), np.asarray(alone.pil_images()[0]),
                                      err_msg=f"job {i} ({sampler}, seed {900 + i})")
        record = json.loads(read_text_chunks(path)["studio"])
        assert record["plan"]["seeds"] == [900 + i] and record["plan"]["sampler"] == sampler


def call_queued(server, api_name, data):
    """A raw HTTP call through the queue (/call/NAME, then its event stream): what any HTTP client can send,
    NaN included (gradio_client refuses to encode NaN)."""
    import json
    import urllib.request

    request = urllib.request.Request(f"{server}gradio_api/call/{api_name}", data=json.dumps({"data": data}).encode(),
                                     headers={"Content-Type": "application/json"})
    event_id = json.loads(urllib.request.urlopen(request, timeout=60).read())["event_id"]
    stream = urllib.request.urlopen(f"{server}gradio_api/call/{api_name}/{event_id}", timeout=300).read().decode()
    events = [block.splitlines() for block in stream.strip().split("\n\n")]
    kind, payload = events[-1][0].removeprefix("event: "), events[-1][1].removeprefix("data: ")
    return kind, json.loads(payload)


def test_hostile_numbers_over_http_are_clear_messages(server):
    """Values of the right JSON type that the settings refuse: a clear message from the request model.
    (Values of the wrong type, NaN included, are refused before the queue: tests/test_server_guard.py.)"""
    for overrides, needle in ((dict(steps=2.5), "steps: Input should be a valid integer"),
                              (dict(seed=2**40), "seed: Input should be less than or equal to 4294967295"),
                              (dict(model=None), "model: Input should be a valid string")):
        for api_name in ("generate", "plan_preview"):
            kind, data = call_queued(server, api_name, controls(**overrides))
            assert kind == "complete", (overrides, api_name, kind, data)
            assert needle in data[1 if api_name == "generate" else 0], (overrides, api_name, data)


def test_an_input_image_through_the_api(server, config, tmp_path):
    """A script passes the input image as a file parameter; the result has the input's size and records it."""
    import numpy as np
    from gradio_client import Client, handle_file
    from PIL import Image

    from studio.image_input import pixel_sha256
    from studio.service import read_image_settings
    from tests.conftest import make_picture

    picture = tmp_path / "in.png"
    make_picture(72, 48).save(picture)
    client = Client(server, verbose=False)
    gallery, error, info, _ = client.predict(*controls(input_image=True, image_mode="upscale-1.5", steps=4, batch=1,
                                                       uov_image=handle_file(str(picture))),
                                             api_name="/generate")[:4]
    assert error == "" and len(gallery) == 1
    saved = sorted(config.output_dir.glob("*.png"), key=lambda p: p.stat().st_mtime)[-1]
    with Image.open(saved) as image:
        assert image.size == (112, 72)  # 72×48 × 1.5, in multiples of 8
    record = read_image_settings(saved)["request"]["image"]
    with Image.open(picture) as image:
        assert record == {**record, "mode": "upscale-1.5", "sha256": pixel_sha256(image.convert("RGB"))}
    assert (config.output_dir / "inputs" / f"{record['sha256']}.png").is_file()
    _, error, _, _ = client.predict(*controls(input_image=True, image_mode="inpaint", batch=1,
                                              inpaint_image=None), api_name="/generate")[:4]
    assert "drop an image into Inpaint or Outpaint" in error
