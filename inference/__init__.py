"""Applying a trained restorer to user videos (user-facing; the lineage's report stage calls it too).

- `inference.restore_video.restore_video(input, output, checkpoint, params, ...) -> summary dict`:
  whole-video restoration (detect or find pixelated regions, track, cut, restore, blend back, encode, keep
  the audio). `aubergine restore`.
- `inference.validate.validate_clips(clips_dir, out_dir, checkpoint, params, ...) -> report dict`: every
  clip of a folder restored whole, no detection. `aubergine validate`.
- `inference.mosaic_detect.GridMosaicDetector`: a classical detector of pixelated areas.

Nothing here imports Dagster, DVC or MLflow.
"""
