"""The MLflow layout of a search, written and read here only.

- experiment name = search name;
- parent run tagged `cxr.role=search` (a classifier study: `cxr.role=study`), params of the
  search, tags `cxr.best_*`, artefacts `ranking/`, `report/`, `search_space/`, `tsne/`;
- one child run per trial tagged `cxr.role=trial`, `cxr.trial_id`, `mlflow.parentRunId`;
  per-epoch metrics with `step=epoch`; grids `grids/epoch_XXXX.png`; the checkpoint folder
  of each epoch as tag `ckpt.epoch_XXXX`; human verdicts as tags `verdict.epoch_XXXX`;
- the best generator as registered model `cxr-<family>-generator`, alias `champion`.

`layout` holds the names and lookups, `writer` the Tune callback and the study's runs,
`reader` what rank, report and the notebooks read, `models` the model registry.
"""
