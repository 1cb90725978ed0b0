import pytest

pytest.importorskip("matplotlib")

from trainers.plot_metrics import main  # noqa: E402

HEADER = "epoch,train_l1,val_l1,train_psnr,val_psnr,lr,seconds\n"


def test_writes_both_plots(tmp_path):
    log = tmp_path / "log.csv"
    log.write_text(HEADER + "1,0.05,0.06,25.1,24.8,0.001,10\n2,0.04,0.05,26.0,25.5,0.0009,10\n")
    assert main(["--log-path", str(log)]) == 0
    for name in ("log_loss_plot.png", "log_psnr_plot.png"):
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


def test_plots_of_two_logs_in_one_folder_do_not_overwrite_each_other(tmp_path):
    for name in ("a", "b"):
        (tmp_path / f"{name}.csv").write_text(HEADER + "1,0.05,0.06,25.1,24.8,0.001,10\n")
        assert main(["--log-path", str(tmp_path / f"{name}.csv")]) == 0
    assert sorted(p.name for p in tmp_path.glob("*.png")) == [
        "a_loss_plot.png", "a_psnr_plot.png", "b_loss_plot.png", "b_psnr_plot.png"]
