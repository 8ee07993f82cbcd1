"""The shape the code keeps: the Plan types and the settings import nothing of the engine, the front ends
share one service layer, and every control of the one schema is a request field."""

import subprocess
import sys


def test_plan_settings_and_repro_import_nothing_of_the_engine():
    code = ("import sys, studio.settings, studio.plan, studio.repro.risks, studio.repro.diff, studio.controls; "
            "print(sorted(m for m in sys.modules if m.startswith(('studio.engine', 'studio.backends'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out


def test_every_control_is_a_request_field_with_its_choices_from_the_model():
    from studio.controls import CONTROLS
    from studio.settings import build_request

    request = build_request()
    with_image = build_request(image={"mode": "vary-subtle", "sha256": "a" * 64})
    for control in CONTROLS:
        value = with_image if control.path[0] == "image" else request
        for part in control.path:
            value = getattr(value, part)  # an AttributeError here is a control with no request field
        if control.choices and control.name not in ("device",):
            assert value in control.choices, (control.name, value)
    steps = next(c for c in CONTROLS if c.name == "steps")
    assert steps.bounds == (1, 150)  # read from GenerationRequest's Field(ge=1, le=150)


def test_the_cli_and_the_app_call_the_service():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "studio"
    for front in (root / "cli.py", *(root / "ui").rglob("*.py")):
        text = front.read_text()
        assert "engine.run(" not in text and "save_result(" not in text, f"{front.name} runs jobs itself"


def test_the_cli_flags_take_their_choices_from_the_schema():
    from studio.cli import build_parser
    from studio.controls import CONTROLS

    generate = build_parser()._subparsers._group_actions[0].choices["generate"]
    by_flag = {opt: action for action in generate._actions for opt in action.option_strings}
    for control in CONTROLS:
        if control.flag in by_flag and by_flag[control.flag].choices is not None and control.kind == "choice":
            assert list(by_flag[control.flag].choices) == control.choices, control.name
    assert list(by_flag["--ov-mode"].choices) == ["performance", "accuracy"]  # GenerationRequest's Literal
