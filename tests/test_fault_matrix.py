"""The fault matrix: every stage that writes into a run x every fault a user meets, with its contract and the test
that exercises it, in one table.

A cell names one or more tests (``file::function`` or ``file::function[param]``); the parametrised test below checks
each named test exists, and the completeness test fails when a stage (a row of the stage table, a CLI command that
writes into a run) or a fault is added without a cell. The cells' tests run with the rest of the suite: the SIGKILL
and SIGTERM of the generator stages and pretraining in tests/test_crash_safety.py (real processes killed after their
first checkpoint, seeded by SYNTHPOS_FAULT_SEED), every other cell in tests/test_faults.py (in this process, or a
forked child stopped at a seeded one of its atomic writes). A larger sweep over many points of every stage, outside
CI: benchmarks/fault_sweep.py.
"""

from __future__ import annotations

import ast
import itertools
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

TESTS = Path(__file__).parent

#: What can happen to a stage while it runs or before it starts.
FAULTS = {
    "sigkill": "SIGKILL at a seeded point (the OOM killer, a power cut of the process)",
    "sigterm": "SIGTERM at a seeded point (a scheduler's preemption, `kill`)",
    "full-disk": "ENOSPC while writing (a seeded write fails)",
    "second-launch": "a second process on the same run directory while the first holds it",
    "damaged-input": "what the stage reads is cut short, zeroed or not what it claims (a checkpoint, a shard, a source)",
}

#: The rows: the stages of the stage table (synthpos.stages.STAGES) and the commands outside it that write into a run.
STAGES = ("train-generator", "generate", "pretrain", "evaluate", "report", "import-store")

#: Stage-table rows that are another row's code and share its cells.
SAME_AS = {"encoder": "pretrain"}  # round 0's encoder is pretrain_stage with the run's settings and no positives

#: CLI commands that are no row, and why.
NOT_A_ROW = {
    "run": "runs the rows' stages in one process under one (re-entrant) lock: each stage's cells hold inside it; "
           "its second launch: test_faults.py::test_a_second_launch_is_refused_and_a_dead_holder_taken_over",
    "quickstart": "runs pretrain and evaluate through run_stage under one lock, as `run` does",
    "inspect-store": "diagnostics beside a store (<store>/inspect), not a stage output; beside a live holder of the "
                     "run's lock --verify reads only and plain inspect is refused: test_faults.py::"
                     "test_inspect_store_beside_a_live_holder_verifies_read_only_and_inspects_not_at_all",
    "compare": "reads two encoders, writes cka.json where --out says; not in the matrix",
    "export": "writes into a new, empty folder outside the run; not in the matrix",
}


@dataclass(frozen=True)
class Cell:
    contract: str
    tests: tuple[str, ...]


FAULTS_PY, CRASH_PY = "test_faults.py", "test_crash_safety.py"
RESUMES = "the same command resumes to the uninterrupted run's bytes"
TERM = "exit 143 with one line ('terminated (SIGTERM)'), the lock removed; " + RESUMES
FULL = "one line with 'no space', the file and what it needs, exit 2; nothing half-written; after space is freed " \
       "the same command resumes"
SECOND = "exit 2 with one line naming the holder (pid, host, since) and how to proceed; the run directory byte-identical"

MATRIX: dict[tuple[str, str], Cell] = {
    ("train-generator", "sigkill"): Cell(f"resumes from the last (or previous) checkpoint; {RESUMES} (weights)",
                                         (f"{CRASH_PY}::test_train_generator_survives_sigkill",)),
    ("train-generator", "sigterm"): Cell("checkpoints first; " + TERM, (
        f"{CRASH_PY}::test_sigterm_of_generation_stages_is_one_line_and_resumes_to_the_same_bytes[train-generator]",)),
    ("train-generator", "full-disk"): Cell(FULL, (
        f"{FAULTS_PY}::test_a_full_disk_in_each_stage_is_one_line_and_resumable[train-generator]",)),
    ("train-generator", "second-launch"): Cell(SECOND, (
        f"{FAULTS_PY}::test_a_second_launch_of_each_stage_is_refused_with_nothing_changed[train-generator]",)),
    ("train-generator", "damaged-input"): Cell(
        "a checkpoint cut short: resumes from the previous one with a notice; both cut: one line saying to delete "
        "them; the trained weights cut short or zeroed: not done, written again from the last checkpoint byte for "
        "byte (not exercised: a damaged training set, which the dataset loaders refuse on their own)",
        (f"{CRASH_PY}::test_generator_checkpoint_cut_short_falls_back",
         f"{FAULTS_PY}::test_damaged_generator_weights_are_one_line_and_remade_by_the_train_generator_it_advises")),

    ("generate", "sigkill"): Cell(f"finished shards kept (not rewritten); {RESUMES} (16 shards, manifest)",
                                  (f"{CRASH_PY}::test_generate_survives_sigkill",)),
    ("generate", "sigterm"): Cell(TERM, (
        f"{CRASH_PY}::test_sigterm_of_generation_stages_is_one_line_and_resumes_to_the_same_bytes[generate]",)),
    ("generate", "full-disk"): Cell(FULL + " and the store verifies, byte for byte",
                                    (f"{FAULTS_PY}::test_a_full_disk_in_generate_is_one_line_and_the_same_command_resumes",)),
    ("generate", "second-launch"): Cell(SECOND, (
        f"{FAULTS_PY}::test_a_second_launch_of_each_stage_is_refused_with_nothing_changed[generate]",)),
    ("generate", "damaged-input"): Cell(
        "a missing, truncated, zeroed or flipped shard: generate is not done, remakes exactly it (byte for byte); "
        "a shard the manifest does not know is reported, not removed; the generator's weights cut short or zeroed: "
        "one line naming them and `train-generator`, nothing written",
        (f"{FAULTS_PY}::test_a_damaged_store_is_remade_by_the_command_pretrain_advises",
         f"{FAULTS_PY}::test_a_shard_the_manifest_does_not_know_is_reported",
         f"{FAULTS_PY}::test_damaged_generator_weights_are_one_line_and_remade_by_the_train_generator_it_advises")),

    ("pretrain", "sigkill"): Cell(f"resumes from last.ckpt (previous.ckpt if cut); {RESUMES} (backbone bit for bit)",
                                  (f"{CRASH_PY}::test_pretrain_survives_sigkill_and_a_damaged_checkpoint",
                                   f"{CRASH_PY}::test_a_kill_between_the_saves_two_renames_resumes_from_previous")),
    ("pretrain", "sigterm"): Cell("checkpoints at the next batch boundary; " + TERM.replace(RESUMES, "resumes from it"),
                                  (f"{CRASH_PY}::test_sigterm_checkpoints_pretraining_and_exits_143",
                                   f"{CRASH_PY}::test_a_resume_from_the_middle_of_an_epoch_equals_an_uninterrupted_run")),
    ("pretrain", "full-disk"): Cell(FULL, (
        f"{FAULTS_PY}::test_a_full_disk_in_each_stage_is_one_line_and_resumable[pretrain]",)),
    ("pretrain", "second-launch"): Cell(SECOND, (
        f"{FAULTS_PY}::test_a_second_launch_of_each_stage_is_refused_with_nothing_changed[pretrain]",)),
    ("pretrain", "damaged-input"): Cell(
        "a damaged store: one line naming the shard and the `generate` that remakes it, nothing written; a damaged "
        "last.ckpt: the previous one", (f"{FAULTS_PY}::test_a_damaged_store_is_remade_by_the_command_pretrain_advises",
                                        f"{CRASH_PY}::test_pretrain_survives_sigkill_and_a_damaged_checkpoint")),

    ("evaluate", "sigkill"): Cell(f"metrics.json absent or whole, never half; {RESUMES} (metrics.json)", (
        f"{FAULTS_PY}::test_evaluate_stopped_at_a_seeded_write_resumes_to_the_same_metrics[SIGKILL]",)),
    ("evaluate", "sigterm"): Cell(TERM + " (metrics.json)", (
        f"{FAULTS_PY}::test_evaluate_stopped_at_a_seeded_write_resumes_to_the_same_metrics[SIGTERM]",)),
    ("evaluate", "full-disk"): Cell(FULL, (
        f"{FAULTS_PY}::test_a_full_disk_in_each_stage_is_one_line_and_resumable[evaluate]",)),
    ("evaluate", "second-launch"): Cell(SECOND, (
        f"{FAULTS_PY}::test_a_second_launch_of_each_stage_is_refused_with_nothing_changed[evaluate]",)),
    ("evaluate", "damaged-input"): Cell(
        "a backbone cut short or zeroed: one line advising pretrain, which remakes it bit for bit (pretrain is not done "
        "while its backbone is not whole); a file that is no synthpos backbone: one line; nothing moved or written",
        (f"{FAULTS_PY}::test_a_damaged_backbone_is_remade_by_the_command_evaluate_advises",
         f"{FAULTS_PY}::test_a_bad_path_or_value_leaves_the_run_directory_byte_identical")),

    ("report", "sigkill"): Cell("report.html whole or absent; the same command writes it (a left lock is taken over)",
                                (f"{FAULTS_PY}::test_report_stopped_at_its_write_leaves_no_half_page[SIGKILL]",)),
    ("report", "sigterm"): Cell("exit 143 with one line, the lock removed, report.html whole or absent; the same "
                                "command writes it", (
        f"{FAULTS_PY}::test_report_stopped_at_its_write_leaves_no_half_page[SIGTERM]",)),
    ("report", "full-disk"): Cell("one line with 'no space' and the file (a figure in the temporary folder, or "
                                  "report.html), exit 2; the run directory byte-identical", (
        f"{FAULTS_PY}::test_a_full_disk_in_report_is_one_line_and_nothing_half_written",)),
    ("report", "second-launch"): Cell(SECOND + " (report takes the lock of the run it writes report.html into)", (
        f"{FAULTS_PY}::test_a_second_launch_of_each_stage_is_refused_with_nothing_changed[report]",)),
    ("report", "damaged-input"): Cell(
        "a metrics.json cut short, overwritten or of the wrong shape: one line naming it and `synthpos evaluate`, exit "
        "2, nothing written; evaluate is not done while it is damaged, so the advised command remakes it (same bytes)",
        (f"{FAULTS_PY}::test_damaged_metrics_are_one_line_in_report_and_remade_by_the_evaluate_it_advises",)),

    ("import-store", "sigkill"): Cell(f"finished shards kept; {RESUMES} (the shards generate would write)", (
        f"{FAULTS_PY}::test_import_store_stopped_at_a_seeded_write_resumes_to_the_same_shards[SIGKILL]",)),
    ("import-store", "sigterm"): Cell(TERM + " (shards)", (
        f"{FAULTS_PY}::test_import_store_stopped_at_a_seeded_write_resumes_to_the_same_shards[SIGTERM]",)),
    ("import-store", "full-disk"): Cell(FULL + " and the store verifies, byte for byte", (
        f"{FAULTS_PY}::test_a_full_disk_in_import_store_is_one_line_and_the_same_command_resumes",)),
    ("import-store", "second-launch"): Cell(SECOND + " (when the store is the run's)", (
        f"{FAULTS_PY}::test_a_second_launch_of_each_stage_is_refused_with_nothing_changed[import-store]",)),
    ("import-store", "damaged-input"): Cell("a released .npy cut short: one line, nothing written", (
        f"{FAULTS_PY}::test_a_damaged_source_of_import_store_is_one_line_with_nothing_written",)),
}


@cache
def _tests_in(file: str) -> dict[str, set[str] | None]:
    """function name -> the ids of its parametrisation (None: not parametrised), read from the file's source."""
    out: dict[str, set[str] | None] = {}
    for node in ast.parse((TESTS / file).read_text()).body:
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
            ids = None
            for decorator in node.decorator_list:
                if isinstance(decorator, ast.Call) and ast.unparse(decorator.func).endswith("mark.parametrize"):
                    ids = {str(value) for value in ast.literal_eval(decorator.args[1])}
            out[node.name] = ids
    return out


def _commands() -> set[str]:
    from synthpos.cli import app

    return {command.name or command.callback.__name__.replace("_", "-") for command in app.registered_commands}


def test_every_stage_and_fault_has_a_cell() -> None:
    from synthpos.stages import STAGES as TABLE

    assert set(MATRIX) == set(itertools.product(STAGES, FAULTS)), "a stage or fault without its cell (or a stray cell)"
    for stage in TABLE:  # a new row of the stage table needs a row here (or to be another row's code)
        assert stage.name in STAGES or SAME_AS.get(stage.name) in STAGES, stage.name
    commands = _commands()
    assert set(STAGES) <= commands
    assert commands - set(STAGES) == set(NOT_A_ROW), "a new command: a row of the matrix, or a reason in NOT_A_ROW"


@pytest.mark.parametrize(("stage", "fault"), list(itertools.product(STAGES, FAULTS)))
def test_each_cell_states_its_contract_and_names_a_test_that_exists(stage: str, fault: str) -> None:
    cell = MATRIX[stage, fault]
    assert cell.contract and cell.tests
    for test in cell.tests:
        file, _, name = test.partition("::")
        function, _, param = name.partition("[")
        ids = _tests_in(file)
        assert function in ids, f"{test}: no such test"
        if param:
            assert ids[function] is not None and param.rstrip("]") in ids[function], f"{test}: no such parameter"
