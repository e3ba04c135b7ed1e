"""The stage layer: the one place that knows the run.

Every command runs through here, and no module below imports it (the layers in pyproject.toml).

- the table (:mod:`~synthpos.stages.table`): one row per stage, what decides its output and what it reads;
  the rows' parts: :mod:`~synthpos.stages.resolved` (values the config leaves open),
  :mod:`~synthpos.stages.store_state` (the store as generate's output), :mod:`~synthpos.stages.checks`
  (inputs checked before anything is touched), :mod:`~synthpos.stages.encoder` (round 0);
- the records (:mod:`~synthpos.stages.records`), where a stage stands (:mod:`~synthpos.stages.status`)
  and the one way a stage runs (:mod:`~synthpos.stages.runner`);
- one module per command: ``train_generator``, ``generate``, ``pretrain``, ``evaluate``, ``inspect_store``,
  ``import_store``, ``compare``, ``report``, ``export``, ``run``, ``seeds`` (``run --seeds``) and
  ``quickstart``; :mod:`synthpos.cli` parses the arguments and calls their ``command``.

The names below are those code and tests import from ``synthpos.stages``.
"""

from synthpos.stages.records import differences, expected_record, read_record, write_record
from synthpos.stages.run import check_run, run_pipeline, stage_done
from synthpos.stages.runner import plan, run_stage
from synthpos.stages.status import Status, check_inputs, move_aside, prepare_stage, stage_status
from synthpos.stages.table import BY_NAME, PREVIOUS, RECORD, STAGES, Stage, console, flatten, needed

__all__ = ["BY_NAME", "PREVIOUS", "RECORD", "STAGES", "Stage", "Status", "check_inputs", "check_run", "console",
           "differences", "expected_record", "flatten", "move_aside", "needed", "plan", "prepare_stage", "read_record",
           "run_pipeline", "run_stage", "stage_done", "stage_status", "write_record"]
