"""`eyefuse models`, and `eyefuse live` refusing a model or a step count that does not exist."""
from app.cli import main


def test_models_lists_the_builtins_and_the_bundled_models(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in ("bicubic", "burst_fusion", "student_sr", "student_sr_int8"):
        assert f"\n{name} " in out or out.startswith(f"{name} ")
    line = next(line for line in out.splitlines() if line.startswith("student_sr "))
    assert " sr " in line and "0.25" in line and "kB" in line  # kind, GMAC per 640x480 frame, size


def test_live_refuses_an_unknown_model_naming_the_ones_that_exist(capsys):
    assert main(["live", "--headless", "--frames", "1", "--model", "nosuch"]) == 2
    err = capsys.readouterr().err
    assert "no processor or model named 'nosuch'" in err and "student_sr" in err and "eyefuse models" in err


def test_live_refuses_steps_for_a_processor_without_them(capsys):
    assert main(["live", "--headless", "--frames", "1", "--model", "bicubic", "--steps", "2"]) == 2
    assert "'bicubic' has no step count" in capsys.readouterr().err
