"""Fooocus's fast modes: the lcm and euler_sgm_uniform samplers, and Extreme Speed / Lightning with their LoRAs
(written by the tests for the tiny models: nothing is downloaded)."""

import numpy as np
import pytest

from studio.errors import StudioError


@pytest.fixture
def lora_folder(engine, config, tmp_path, monkeypatch):
    """An empty LoRA folder of this test's own, in place of the session's (other tests write LoRAs there)."""
    from studio.adapters.loras import LoraLibrary

    folder = tmp_path / "loras"
    folder.mkdir()
    monkeypatch.setattr(engine, "loras", LoraLibrary(config.model_copy(update={"loras_dir": folder})))
    return folder


def _run(engine, plan, global_seed):
    import torch

    torch.manual_seed(global_seed)  # a sampler drawing from the global RNG would differ between the runs
    return engine.run(plan).images


@pytest.mark.parametrize("sampler", ["lcm", "euler_sgm_uniform"])
def test_the_fast_samplers_repeat_bit_for_bit(engine, tiny_request, sampler):
    plan = engine.plan(tiny_request(sampler=sampler, steps=4, cfg=1.0))
    assert plan.sampler == sampler
    first, again = _run(engine, plan, 1), _run(engine, plan, 2)
    assert np.array_equal(first, again)
    assert np.isfinite(first).all()


def test_the_fast_samplers_schedules():
    from studio.samplers import SAMPLERS, make_scheduler

    import torch

    config = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
              "steps_offset": 1, "timestep_spacing": "leading", "prediction_type": "epsilon"}
    euler = make_scheduler(SAMPLERS["euler_sgm_uniform"], config, torch.Generator().manual_seed(0))
    euler.set_timesteps(4)
    assert euler.timesteps.tolist() == [999, 749, 499, 249]  # ComfyUI's sgm_uniform: 999, 749.25, 499.5, 249.75
    assert euler.sigmas[-1] == 0
    lcm = make_scheduler(SAMPLERS["lcm"], config, torch.Generator().manual_seed(0))
    assert type(lcm).__name__ == "LCMScheduler"
    lcm.set_timesteps(8)
    assert len(lcm.timesteps) == 8 and lcm.timesteps[0] == 999
    assert SAMPLERS["lcm"].a1111_name == "LCM" and SAMPLERS["euler_sgm_uniform"].a1111_name == "Euler SGM Uniform"


def test_extreme_speed_applies_the_lcm_lora_and_the_plan_says_what_it_set(engine, lora_folder, tiny_request):
    from adapter_files import write_lora

    pipe = engine.registry.load(engine.registry.resolve("tiny"))
    path = write_lora(lora_folder / "lcm-lora-sdv1-5.safetensors", pipe, scale=0.3)
    plan = engine.plan(tiny_request(performance="extreme-speed", steps=30, cfg=7.0, sampler="euler"))
    assert (plan.request.steps, plan.sampler, plan.request.cfg) == (8, "lcm", 1.0)
    assert plan.performance == {"mode": "extreme-speed", "label": "Extreme Speed", "steps": 8, "sampler": "lcm",
                                "cfg": 1.0, "replaced": {"steps": 30, "sampler": "euler", "cfg": 7.0},
                                "lora": "lcm-lora-sdv1-5.safetensors", "weight": 1.0}
    from studio.ui.views import plan_markdown

    assert ("**Performance:** Extreme Speed: 8 steps · lcm · CFG 1 · LoRA lcm-lora-sdv1-5.safetensors at 1 (in place "
            "of steps 30, sampler euler, cfg 7)") in plan_markdown(plan, None)
    [lora] = plan.loras
    assert (lora.file, lora.weight, lora.source) == ("lcm-lora-sdv1-5.safetensors", 1.0, "performance")
    assert plan.request.performance_lora.sha256 == lora.sha256  # recorded: a replay finds these bytes
    with_lora = engine.run(plan).images
    without = engine.run(engine.plan(tiny_request(steps=8, sampler="lcm", cfg=1.0))).images
    assert not np.array_equal(with_lora, without)  # the LoRA is applied
    # The plan's request replays the same plan, and finds the LoRA by its hash under another name.
    path.rename(lora_folder / "renamed.safetensors")
    again = engine.plan(plan.request)
    assert again.request == plan.request and again.loras[0].sha256 == lora.sha256
    assert again.loras[0].file == "renamed.safetensors" and again.loras[0].notes
    assert again.performance["replaced"] == {}  # the recorded request holds the mode's own values


def test_a_missing_speed_lora_is_one_line_naming_the_file_and_folder(engine, lora_folder, tiny_request):
    with pytest.raises(StudioError) as missing:
        engine.plan(tiny_request(performance="extreme-speed"))
    assert str(missing.value) == (f"Extreme Speed needs the LCM LoRA lcm-lora-sdv1-5.safetensors in {lora_folder}: "
                                  "copy it there (nothing is downloaded)")
    with pytest.raises(StudioError, match="Lightning needs the Lightning LoRA sdxl_lightning_4step_lora.safetensors"):
        engine.plan(tiny_request(performance="lightning", model="tiny-sdxl"))
    with pytest.raises(StudioError, match="Extreme Speed needs the LCM LoRA sdxl_lcm_lora.safetensors"):
        engine.plan(tiny_request(performance="extreme-speed", model="tiny-sdxl"))
    with pytest.raises(StudioError, match="Lightning has no Lightning LoRA for SD1 models .*SDXL"):
        engine.plan(tiny_request(performance="lightning"))
    # A LoRA under another name is not taken for the speed LoRA (no hash of the published file is known).
    (lora_folder / "sdxl_lcm_lora_copy.safetensors").write_bytes(b"")
    with pytest.raises(StudioError, match="needs the LCM LoRA"):
        engine.plan(tiny_request(performance="extreme-speed", model="tiny-sdxl"))


def test_lightning_on_sdxl_plans_euler_sgm_uniform_with_its_lora(engine, lora_folder, tiny_request):
    from adapter_files import write_lora

    pipe = engine.registry.load(engine.registry.resolve("tiny-sdxl"))
    write_lora(lora_folder / "sdxl_lightning_4step_lora.safetensors", pipe, text_encoder=False)
    plan = engine.plan(tiny_request(performance="lightning", model="tiny-sdxl"))
    assert (plan.request.steps, plan.sampler, plan.request.cfg) == (4, "euler_sgm_uniform", 1.0)
    assert [(lora.name, lora.source) for lora in plan.loras] == [("sdxl_lightning_4step_lora", "performance")]
    assert plan.performance["replaced"] == {"sampler": "euler", "cfg": 7.0}  # steps were 4 already


def test_request_and_cli_name_the_mode(tiny_request):
    from studio.cli import build_parser, requests_from_args

    with pytest.raises(StudioError, match="performance_lora is set but performance is not"):
        tiny_request(performance_lora={"name": "x", "sha256": "a" * 64})
    with pytest.raises(StudioError, match="performance"):
        tiny_request(performance="hyper-sd")
    parser = build_parser()

    def request(*flags):
        return requests_from_args(parser.parse_args(["plan", "--prompt", "a", *flags]))[0]

    assert request("--performance", "extreme-speed").performance == "extreme-speed"
    quality = request("--performance", "quality")
    assert (quality.performance, quality.steps) == (None, 60)
    with pytest.raises(StudioError, match="--performance speed means 30 steps and --steps says 12"):
        request("--performance", "speed", "--steps", "12")
    with pytest.raises(StudioError, match="invalid choice: 'turbo'"):  # one line, no traceback
        parser.parse_args(["plan", "--performance", "turbo"])


def test_the_performance_radio_sets_the_controls_and_the_request():
    from studio.choices import PERFORMANCE_LABELS, mode_of, performance_of
    from studio.ui.tabs.setting import controls_for, performance_after_steps

    assert PERFORMANCE_LABELS == ["Quality", "Speed", "Extreme Speed", "Lightning", "Custom"]
    assert controls_for("Extreme Speed", 30, "euler", 7.0) == (8, "lcm", 1.0)
    assert controls_for("Lightning", 30, "euler", 7.0) == (4, "euler_sgm_uniform", 1.0)
    assert controls_for("Quality", 8, "lcm", 1.0) == (60, "dpmpp_2m_sde_karras", 7.0)  # leaving a fast mode
    assert controls_for("Speed", 60, "euler", 4.0) == (30, "euler", 4.0)  # the user's own are kept
    assert performance_after_steps(8, "Extreme Speed") == "Extreme Speed"
    assert performance_after_steps(9, "Extreme Speed") == "Custom"
    assert [mode_of(label) for label in PERFORMANCE_LABELS] == [None, None, "extreme-speed", "lightning", None]
    assert performance_of(4, "lightning") == "Lightning" and performance_of(60, None) == "Quality"


def test_a_request_with_a_fast_mode_opens_in_the_app_as_it_runs(tiny_request):
    from studio.ui.page import control_values, request_values

    values = control_values(tiny_request(performance="extreme-speed", steps=30, sampler="euler", cfg=7.0))
    assert (values["performance"], values["steps"], values["sampler"], values["cfg"]) == ("Extreme Speed", 8, "lcm", 1.0)
    assert request_values({**values, "seed_mode": "fixed", "replay": None})["performance"] == "extreme-speed"
    assert control_values(tiny_request(steps=60))["performance"] == "Quality"


def test_a_preset_whose_speed_lora_is_not_here_opens_with_the_report_saying_so(config, tmp_path):
    from studio.service import Studio
    from studio.settings import AppConfig, Preset, build_request

    empty = tmp_path / "loras"
    empty.mkdir()
    studio = Studio(AppConfig(cache_dir=config.cache_dir, output_dir=tmp_path / "out", models_dir=config.models_dir,
                              loras_dir=empty))
    request = build_request(prompt="a cat", seed=3, model="tiny", width=64, height=64, performance="extreme-speed")
    opened = studio.open_preset(Preset(model={"file": "tiny"}, request=request.model_dump(exclude={"model"})), [])
    assert opened.report["expected"] == "different"
    assert any("lcm-lora-sdv1-5" in line and "speed mode" in line for line in opened.report["missing_loras"])
    assert opened.plan.performance is None and opened.request.performance == "extreme-speed"
