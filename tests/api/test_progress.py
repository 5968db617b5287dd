"""The CLI's progress lines and fold table (api/progress.py), on jobs as GET /jobs/{id} gives them."""
from api.progress import fold_line, fold_table


def fold(index, **values):
    return {"index": index, "status": "succeeded", "epoch": 40, "val_loss": 0.25, "best_epoch": 31,
            "best_val_loss": 0.0712, "best_val_accuracy": 0.98, "test_metrics": {"accuracy": 0.97},
            **values}


def test_a_progress_line_shows_the_latest_and_the_best_validation_loss_apart():
    line = fold_line(fold(0, status="running"), max_epochs=100)
    assert "epoch   40" in line and "val_loss 0.2500" in line and "best 0.0712 @ 31" in line


def test_the_fold_table_shows_each_folds_best_epoch_figures_and_the_summary():
    job = {"folds": [fold(0), fold(1, best_val_loss=0.09)],
           "summary": {"test_accuracy_mean": 0.97, "test_accuracy_std": 0.0}}
    rows = [line.split() for line in fold_table(job).splitlines()]
    assert rows[0] == ["fold", "status", "best_epoch", "best_val_loss", "best_val_accuracy", "test_accuracy"]
    assert rows[1] == ["0", "succeeded", "31", "0.0712", "0.9800", "0.9700"]
    assert rows[2][3] == "0.0900" and rows[3] == ["mean", "0.9700"] and rows[4] == ["std", "0.0000"]


def test_a_regression_table_has_no_accuracy_column():
    job = {"folds": [fold(0, best_val_accuracy=None, test_metrics={"r2": 0.5})], "summary": {}}
    assert fold_table(job).splitlines()[0].split() == ["fold", "status", "best_epoch", "best_val_loss",
                                                       "test_r2"]
