"""The registered anonymizer as an MLflow pyfunc: `mlflow.pyfunc.load_model("models:/face-plate-anonymizer@champion")`.

Why a pyfunc and not the bare LoRA folder: a LoRA alone is not usable -- it needs its base, the region crop and
blend, the plate-text anchor and the sampling settings it was validated with. The pyfunc carries all of it:
artifacts `lora/` (diffusers' format, also loadable on its own with `load_lora_weights`) and `anonymizer.json`
(settings, base model id and the base's sha256s), plus `base/` when the base is the embedded stand-in (a few
MB). A real SD2 base (5 GB) is not copied into every version: the model config's `base_dir` points at it
(override with `model_config={"base_dir": ...}` when loading elsewhere), checked against the recorded hashes.

predict() takes a DataFrame with `image` (PNG/JPEG bytes) and `regions` (JSON: [{"kind", "box": [x, y, w, h],
"seed"}]) and returns one with `image` (PNG bytes) and `fake_texts` (JSON list).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import mlflow.pyfunc
import numpy as np

SETTINGS_FILE = "anonymizer.json"


class AnonymizerPyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from inference.anonymize_methods import LoraAnonymizer

        settings = json.loads(Path(context.artifacts["settings"]).read_text())
        config = dict(context.model_config or {})
        base = context.artifacts.get("base") or config.get("base_dir") or settings["base_dir"]
        self.anonymizer = LoraAnonymizer(base, context.artifacts["lora"], **settings["anonymizer"],
                                         device=config.get("device", "cpu"))

    def predict(self, context, model_input, params=None):
        import pandas as pd
        from PIL import Image

        from inference.anonymize_methods import Region

        images, texts = [], []
        for raw, regions in zip(model_input["image"], model_input["regions"]):
            with Image.open(io.BytesIO(raw)) as im:
                rgb = np.asarray(im.convert("RGB")).copy()
            found = [Region(r["kind"], tuple(float(v) for v in r["box"]), int(r.get("seed", 0)))
                     for r in json.loads(regions)]
            out = self.anonymizer(rgb, found)
            buf = io.BytesIO()
            Image.fromarray(out.image).save(buf, format="PNG")
            images.append(buf.getvalue())
            texts.append(json.dumps(out.fake_texts))
        return pd.DataFrame({"image": images, "fake_texts": texts})
