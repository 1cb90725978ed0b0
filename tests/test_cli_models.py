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


def test_the_command_line_parses_without_the_heavy_libraries():
    # `eyefuse --help` must answer at once: building the parser imports none of the libraries that
    # take seconds to load (they are imported by the commands that use them)
    import subprocess
    import sys

    code = ("import sys, app.cli; app.cli.build_parser(); "
            "print(sorted(m for m in ('onnx', 'scipy', 'skimage', 'torch', 'PyQt6', 'numba', 'trainers') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "[]", out.stdout
