"""Which metrics each registered model's evaluation run logs, by name.

The promotion gate's rules in params.yaml name these metrics. They are checked against this catalogue when
params.yaml is loaded, so a rule that names a metric no evaluation produces is an error before any training
starts, not a surprise at the end of a week's run. tests/test_promotion.py checks the catalogue against the
metrics the report stages really write, so it cannot drift from them.
"""

from __future__ import annotations

RESTORER = "eggplant-restorer"
DETECTOR = "face-plate-detector"
MOSAIC_DETECTOR = "mosaic-detector"
ANONYMIZER = "face-plate-anonymizer"
ANONYMIZATION_METHODS = ("blur", "pixelate", "fill")  # the baselines, logged with their name as prefix
_ANONYMIZATION = ("id_mean_sim", "reid_rate", "faces", "orig_text_read_rate", "fake_text_exact", "fake_text_char_acc",
                  "plates", "fid_image", "fid_region", "AP50", "AP50_face", "AP50_plate", "map_retention",
                  "map_retention_face", "map_retention_plate", "flicker_ratio")

_RESTORATION_BASE = ("psnr", "ssim", "psnr_region", "ssim_region", "psnr_region_pooled")
_DETECTION_CATEGORIES = ("face", "plate")

REPORT_METRICS: dict[str, frozenset[str]] = {
    # restoration_report: mosaic input vs restored output against the eggplant GT (evaluation/restoration_eval.py)
    RESTORER: frozenset(
        [f"{side}_{m}" for side in ("input", "output") for m in _RESTORATION_BASE]
        + ["psnr_gain_db", "psnr_region_gain_db", "frames", "scenes"]
        # is the eggplant visible (evaluation/eggplant_visibility.py)
        + ["lowpass_psnr_region_input", "lowpass_psnr_region_output", "lowpass_region_gain_db", "purple_iou", "green_iou",
           "purple_iou_input", "green_iou_input", "changed_outside_share"]
    ),
    # detection_report: COCO evaluation on the val split (evaluation/detection_map.py)
    DETECTOR: frozenset(
        ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl", "images", "gt_boxes"]
        + [f"{m}_{c}" for m in ("AP", "AP50", "AP75", "AR100") for c in _DETECTION_CATEGORIES]
    ),
    # mosaic_detection_report: COCO evaluation of the trained mosaic detector and the grid heuristic (grid_*) on the
    # val clips' mosaics, and the scene recall of a whole-video pass (orchestration/mosaic_detection_stages.py)
    MOSAIC_DETECTOR: frozenset(
        ["AP", "AP50", "AP75", "APm", "APl", "AR1", "AR10", "AR100", "ARm", "ARl", "images", "gt_boxes", "AP_mosaic", "AP50_mosaic", "AP75_mosaic", "AR100_mosaic", "grid_AP", "grid_AP50", "grid_AP75", "grid_AR100",
         "AP50_gain_over_grid", "video_scene_recall", "grid_video_scene_recall", "val_videos"]
    ),
    # anonymization_report: the anonymizer's figures unprefixed, each baseline's as `<method>_<metric>`, and the
    # originals' own (evaluation/anonymization_eval.py)
    ANONYMIZER: frozenset(
        list(_ANONYMIZATION) + [f"{m}_{k}" for m in ANONYMIZATION_METHODS for k in _ANONYMIZATION]
        + ["images", "regions", "original_AP50", "original_AP50_face", "original_AP50_plate", "original_text_read_rate"]
    ),
}
