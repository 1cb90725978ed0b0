import pytest

from trainers.plot_metrics import main

HEADER = "epoch,train_l1,val_l1,train_psnr,val_psnr,lr,seconds\n"


def test_writes_both_plots(tmp_path):
    log = tmp_path / "log.csv"
    log.write_text(HEADER + "1,0.05,0.06,25.1,24.8,0.001,10\n2,0.04,0.05,26.0,25.5,0.0009,10\n")
    assert main(["--log-path", str(log)]) == 0
    for name in ("loss_plot.png", "psnr_plot.png"):
        data = (tmp_path / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


@pytest.mark.parametrize("content,message", [
    ("", "is empty"),
    (HEADER, "no epochs yet"),
    ("epoch,loss\n1,0.1\n", "columns ['train_l1', 'val_l1', 'train_psnr', 'val_psnr'] are missing"),
    (HEADER + "1,0.05,abc,25,24,0.001,10\n", "line 2: column 'val_l1' has 'abc'"),
])
def test_refuses_bad_logs(tmp_path, capsys, content, message):
    log = tmp_path / "log.csv"
    log.write_text(content)
    assert main(["--log-path", str(log)]) == 2
    assert message in capsys.readouterr().err
    assert not list(tmp_path.glob("*.png"))


def test_every_committed_log_has_its_plots_and_the_manifest_points_at_it():
    """training_logs/<run>/ holds log.csv and its two plots; each manifest entry names its log."""
    import json
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    logs = sorted((repo / "training_logs").glob("*/log.csv"))
    assert logs, "no committed training logs"
    for log in logs:
        for name in ("loss_plot.png", "psnr_plot.png"):
            assert (log.parent / name).stat().st_size > 5000, f"{log.parent.name} lacks {name}"
    models = json.loads((repo / "weights" / "manifest.json").read_text())["models"]
    for name, entry in models.items():
        log = entry.get("training", {}).get("log")
        assert log is None or (repo / log).is_file(), f"{name}: manifest log {log} does not exist"
