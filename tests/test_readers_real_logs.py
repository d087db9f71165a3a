"""events.readers on the real logs in tests/fixtures/real-logs (copies of public projects' logs).

Expected values were read off the files by hand (grep), see the comments.
"""
import math
import os
import sys

import pytest

from events.readers import read_log, read_runs, sniff_format

REAL = os.path.join(os.path.dirname(__file__), "fixtures", "real-logs")
NYU = os.path.join(REAL, "d2-log__HaowenGuan__NYU-Semi-Supervise-Object-Detection.txt")
MGM_LOG = os.path.join(REAL, "d2-log__BUAAZhangHaonan__mgm_mask2former.txt")
MGM_METRICS = os.path.join(REAL, "d2-metrics__BUAAZhangHaonan__mgm_mask2former.json")
WASTE = os.path.join(REAL, "d2-metrics__Elbhnasy__Medical_Waste_Detection_Detectron2.json")
DETR = os.path.join(REAL, "detr-log__FarjadAhmed__detr_custom_dcmha.txt")
MMDET = os.path.join(REAL, "mmdet-log__boostcampaitech2__object-detection-level2-cv-15.json")


@pytest.mark.parametrize(
    "path, fmt",
    [(NYU, "detectron2-log"), (MGM_LOG, "detectron2-log"), (MGM_METRICS, "detectron2-metrics"),
     (WASTE, "detectron2-metrics"), (DETR, "detr-log"), (MMDET, "mmdet-json")],
)
def test_format_is_detected_from_content(path, fmt):
    with open(path, "rb") as handle:
        assert sniff_format(handle.read()) == fmt


def test_detectron2_log_with_periodic_evaluations():
    table = read_log(NYU)
    total = table.train["total_loss"]
    # grep -c "d2.utils.events INFO:  eta:" -> 801 event lines, iter 19 .. 16009 (after "Total training time").
    assert len(total) == 801
    assert total.steps[0] == 19 and total.steps[-1] == 16009
    assert total.value_at(39) == 0.1456
    assert total.value_at(16009) == 0.1668
    assert table.train["max_mem"].value_at(19) == 11811.0  # "max_mem: 11811M"
    assert table.train["eta_seconds"].value_at(19) == 21 * 3600 + 48 * 60 + 59  # "eta: 21:48:59"
    # 16 copypaste blocks, each logged just before the event line of its iteration.
    assert table.eval_records == 16
    ap = table.val["bbox/AP"]
    assert ap.steps.tolist() == [999.0 + 1000 * k for k in range(16)]
    assert ap.value_at(999) == 10.9699 and ap.value_at(15999) == 14.2124
    assert table.val["bbox/APl"].value_at(15999) == 17.2026
    assert len(table.runs) == 1 and table.skipped.lines == 0
    # Timestamps give the time axis: 14:20:37 -> 18:10:05 is 13768 s.
    assert table.axes["time"].values[-1] == 13768.0


def test_detectron2_log_with_three_runs_and_ansi_codes():
    runs = read_runs(MGM_LOG)
    # Three "Starting training from iteration 0"; 100, 25 and 200 event lines.
    assert [len(r.train["total_loss"]) for r in runs] == [100, 25, 200]
    assert [r.run.last_step for r in runs] == [1999.0, 493.0, 3999.0]
    assert [r.train["total_loss"].value_at(19) for r in runs] == [76.49, 109.3, 109.5]
    assert runs[0].train["lr"].value_at(19) == 4.762e-07
    last = read_log(MGM_LOG)  # the last run by default
    assert last.run.number == 3
    assert last.train["loss_ce_8"].value_at(3999) == 0.1441
    # The evaluation after training is attached to the run's last iteration.
    assert [r.eval_records for r in runs] == [1, 0, 1]
    assert last.val["segm/AP"].value_at(3999) == 65.1157
    assert math.isnan(last.val["segm/APs"].value_at(3999))  # "nan" in the copypaste line
    assert read_log(MGM_LOG, run=1).val["segm/AP"].value_at(1999) == 39.8356
    # Aux losses of all nine decoder layers are read.
    assert {f"loss_dice_{i}" for i in range(9)} <= set(last.train)


def test_detectron2_metrics_with_runs_going_backwards_and_nan_tokens():
    runs = read_runs(MGM_METRICS)
    assert len(runs) == 3  # the iteration goes back to 19 twice
    first, crashed, last = runs
    assert first.train["loss_ce"].value_at(19) == 1.1687584519386292
    assert first.val["segm/AP"].value_at(2000) == 39.83560571104925
    assert math.isnan(first.val["bbox/APs"].value_at(2000))  # bare NaN token
    # The crashed run ends with a 2-key record {"eta_seconds": ..., "iteration": 493}.
    assert crashed.run.last_step == 493.0
    assert crashed.train["eta_seconds"].value_at(493) == 4143.747028109268
    assert crashed.train["loss_ce"].steps[-1] == 492.0
    assert [r.eval_records for r in runs] == [1, 0, 1]
    assert last.val["segm/AP"].value_at(4000) == 65.11574610396931


def test_detectron2_metrics_clean_baseline_with_slash_keys():
    table = read_log(WASTE)
    assert len(table.train["total_loss"]) == 200
    assert table.train["total_loss"].value_at(3999) == 1.0374564621597528
    assert table.train["fast_rcnn/cls_accuracy"].value_at(19) == 0.056640625
    assert "roi_head/num_fg_samples" in table.train  # a "/" key that is no evaluation metric
    assert table.val == {} and table.eval_records == 0


def test_detr_log_epochs_aux_layers_and_coco_list():
    table = read_log(DETR)
    assert table.step_unit == "epoch"
    loss = table.train["loss"]  # train_loss
    assert len(loss) == 500 and loss.steps[0] == 0 and loss.steps[-1] == 499
    assert loss.value_at(0) == 25.99649900791449 and loss.value_at(499) == 6.092872703746283
    assert table.val["loss"].value_at(0) == 34.318174603619156  # test_loss
    assert {f"loss_giou_{i}" for i in range(5)} <= set(table.train)
    assert "cardinality_error_3_unscaled" in table.train
    # test_coco_eval_bbox is COCOeval.stats: AP, AP50, ... ARl.
    assert table.val["coco_eval_bbox/AP"].value_at(0) == 0.0007358489524516635
    assert table.val["coco_eval_bbox/AP"].value_at(499) == 0.4202917575662765
    assert len([k for k in table.val if k.startswith("coco_eval_bbox/")]) == 12
    assert table.eval_records == 500
    assert "n_parameters" not in table.train


def test_mmdet_log_json_train_and_val_modes():
    table = read_log(MMDET)
    loss = table.train["loss"]
    assert len(loss) == 570  # 570 train records; the env/config line is metadata
    # Iterations restart each epoch; 950 is the last logged iteration of an epoch.
    assert loss.value_at(50) == 1.33116  # epoch 1, iter 50
    assert loss.value_at(950 + 50) == 0.99383  # epoch 2, iter 50
    assert table.eval_records == 30
    assert table.val["bbox_mAP"].value_at(7 * 950) == 0.157  # val record of epoch 7
    assert "bbox_mAP_copypaste" not in table.val  # a string field
    assert table.axes["epoch"].values[0] == pytest.approx(50 / 950)
    assert table.skipped.lines == 0


def test_reading_never_imports_torch(tmp_path):
    code = (
        "import sys; from events.readers import read_log; "
        f"read_log({NYU!r}); read_log({DETR!r}); "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    import subprocess

    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
