"""The imbalance-strategy study (`python -m orchestrator.study`): its config and command line
(`config`), its driver (`driver`) and its MLflow layout (`store`).  The training and the
statistics are `trainables.classifier.study`; nothing of the study lives in the search
pipeline.  Nothing is imported here, so `--help` stays fast."""
