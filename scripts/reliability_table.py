"""Generate docs/reliability.md from the bad-input corpus index and the fault/security test list.

    python scripts/reliability_table.py          # rewrite docs/reliability.md
    python scripts/reliability_table.py --check  # exit 1 when the file is stale

tests/test_reliability_doc.py runs the check and verifies that every test named here exists,
so the document cannot drift from the corpus or the tests.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter, OrderedDict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
INDEX = REPO / "tests" / "data" / "bad" / "index.json"
DOC = REPO / "docs" / "reliability.md"

# (fault, what happens, test) — the test is "file::function".
FAULTS: list[tuple[str, str, str]] = [
    (
        "S3 endpoint lost in the middle of an export",
        "export fails with a StorageError naming the URI (fast, no hang); no manifest.json or latest.json is "
        "visible; a retry after the endpoint returns publishes the version and uploads only the missing files; "
        "a third run uploads nothing",
        "tests/test_faults.py::test_s3_endpoint_lost_mid_export_then_retry_uploads_only_missing",
    ),
    (
        "S3 endpoint down for `grounding-ops prepare`",
        "exit 2 with one `error:` line naming the output URI, no traceback",
        "tests/test_faults.py::test_s3_endpoint_down_cli_prepare_one_line_error",
    ),
    (
        "S3 refuses an upload (e.g. no such bucket)",
        "StorageError (one-line CLI error), not boto3's S3UploadFailedError",
        "tests/test_faults.py::test_s3_upload_refused_by_server_is_a_storage_error",
    ),
    (
        "MLflow server stopped during promotion (after the version was created)",
        "PromotionError naming the tracking URI; after a restart the retry finds the version, sets the aliases; "
        "exactly one model version, champion == challenger == that version; a further retry changes nothing",
        "tests/test_faults.py::test_mlflow_down_during_promotion_then_retry_is_consistent",
    ),
    (
        "MLflow server down for `grounding-ops promote`",
        "non-zero exit with one `error:` line naming the tracking URI, no traceback",
        "tests/test_faults.py::test_mlflow_down_cli_promote_one_line_error",
    ),
    (
        "Disk full while preparing (RLIMIT_FSIZE)",
        "non-zero exit with one `error:` line, no traceback; no manifest, no latest.json, no temporary files left",
        "tests/test_faults.py::test_disk_full_during_prepare_clean_error_no_corrupt_files",
    ),
    (
        "Output path unwritable (its parent is a regular file)",
        "exit 2 with one `error:` line naming the path; nothing overwritten",
        "tests/test_faults.py::test_output_under_a_regular_file_is_a_clean_error",
    ),
    (
        "Write cut short in a local store",
        "StorageError; the previous object stays intact (temporary name, then rename)",
        "tests/test_faults.py::test_local_store_write_past_limit_leaves_old_object_intact",
    ),
    (
        "Training container SIGKILLed after its first S3 checkpoint",
        "no run.json; the rerun resumes from the last complete checkpoint in S3 and ends with steps_done == target; "
        "a third run with nothing left to train fails",
        "tests/test_faults.py::test_training_container_sigkill_resumes_to_target",
    ),
    (
        "Train task's command vs the trainer image's ENTRYPOINT",
        "the DAG's argument list appended to the image entrypoint is a valid `grounding-ops train` call",
        "tests/test_faults.py::test_train_task_command_matches_the_image_entrypoint",
    ),
    (
        "Task killed from Airflow (mark failed / timeout)",
        "DockerOperator.on_kill stops the container, execute() fails, the container is removed",
        "tests/test_faults.py::test_on_kill_stops_and_removes_the_container",
    ),
    (
        "Retry while the previous try's container is still there",
        "container names are unique per DAG run, task, map index and try; the retry runs, the leftover is untouched",
        "tests/test_faults.py::test_retry_never_collides_with_a_leftover_container",
    ),
    (
        "Scheduler restarted in the middle of a DAG run",
        "the scheduler (and the task it was running) is stopped after the first task finished and started again: "
        "the interrupted task is failed by the heartbeat timeout and retried, the run succeeds, and the finished "
        "task is not run again (try_number stays 1)",
        "tests/test_faults.py::test_scheduler_restart_mid_run_completes_without_repeating_finished_work",
    ),
]

SECURITY: list[tuple[str, str, str]] = [
    (
        "Credentials in export outputs and CLI output",
        "fake S3/W&B/MLflow secrets in the environment never appear in stdout/stderr or any object written "
        "(manifest, quarantine, parquet, validation results)",
        "tests/test_security.py::test_export_never_writes_or_prints_credentials",
    ),
    (
        "Credentials in MLflow, W&B files, logs and the plugin",
        "no secret in run params/tags, model version tags, artifacts, W&B offline files, captured logs, "
        "the plugin's JSON and HTML",
        "tests/test_security.py::test_evaluation_logging_and_plugin_never_expose_credentials",
    ),
    (
        "Credentials reach containers only as private environment",
        "secrets only in DockerOperator's private_environment (not templated); a secret-looking plain env var is "
        "refused",
        "tests/test_security.py::test_container_credentials_only_as_private_environment",
    ),
    (
        "Credentials in the training plan and lineage facets",
        "the plan (template field, XCom) and OpenLineage facets hold no secret",
        "tests/test_security.py::test_training_plan_and_lineage_carry_no_credentials",
    ),
    (
        "Training container lockdown",
        "non-root user, not privileged, every capability dropped, no-new-privileges, pids and memory limits, "
        "no mounts (no Docker socket), argument list; network from GROUNDING_OPS_CONTAINER_NETWORK (host only locally)",
        "tests/test_security.py::test_training_container_is_locked_down",
    ),
    ("Trainer image default user", "non-root", "tests/test_security.py::test_trainer_image_runs_as_non_root"),
    (
        "Image references escaping a local images root",
        "'..', absolute paths, backslashes, other schemes and buckets are refused",
        "tests/test_security.py::test_image_refs_cannot_escape_the_local_root",
    ),
    (
        "Image references escaping an S3 images root",
        "other prefixes, buckets and '..' are refused",
        "tests/test_security.py::test_image_refs_cannot_escape_the_s3_root",
    ),
    ("Symlink out of the images root", "refused", "tests/test_security.py::test_symlink_out_of_the_root_is_refused"),
    (
        "Object keys escaping a store root/prefix",
        "StorageError",
        "tests/test_security.py::test_store_keys_cannot_escape",
    ),
    (
        "Checkpoint marker naming files outside the checkpoint",
        "the trainer must not write outside its checkpoint folder",
        "tests/test_security.py::test_checkpoint_marker_cannot_write_outside_the_checkpoint",
    ),
    (
        "Tampered dataset before training",
        "the runner's dataset fetch refuses it (checksum)",
        "tests/test_security.py::test_training_fetch_verifies_the_manifest",
    ),
    (
        "Tampered dataset before evaluation",
        "evaluation refuses it (checksum)",
        "tests/test_bad_inputs.py::test_evaluation_refuses_tampered_dataset",
    ),
    (
        "Plugin page and JSON without an authenticated user",
        "401 for JSON, redirect to login for the page",
        "tests/test_plugin.py::test_unauthenticated_requests_are_refused",
    ),
]

# Trust boundaries: (bucket prefix, who writes it, who reads it, what a foreign writer could do / what stops it).
PREFIXES: list[tuple[str, str, str, str]] = [
    (
        "`incoming/` (the default input root)",
        "data producers (uploaders of annotations and images)",
        "the `grounding_data` workers",
        "rows are validated and quarantined; image references stay inside the images "
        "root; nothing outside the configured input roots (`GROUNDING_OPS_INPUT_ROOTS`) is read",
    ),
    (
        "`datasets/<name>/_staging/<run>/`",
        "the `validate` task only",
        "the `export` task",
        "export downloads only the objects `validate` staged and checks each against the sha256 it recorded (passed "
        "through XCom, not read back from the bucket); extra objects are ignored",
    ),
    (
        "`datasets/<name>/<version>/`",
        "the `export` task only",
        "trainers, evaluators, the models page",
        "every file is checked against the manifest's sha256 before use; manifest names must stay inside the "
        "version folder",
    ),
    (
        "`runs/<run>/checkpoints/`",
        "the training container only",
        "the trainer on resume, the evaluators",
        "VeRL unpickles resumed checkpoints (`torch.load(weights_only=False)`): a resume verifies every file's "
        "sha256 recorded by the trainer at upload and refuses markers without checksums; the prefix must be writable "
        "by the trainer alone",
    ),
    (
        "`runs/<run>/` (run.json, final/, evaluations)",
        "the training and evaluation containers",
        "the platform's promotion task",
        "promotion registers only what the gate decided on; the alias is moved by the platform, never by a container",
    ),
    ("`mlflow/` (MLflow artifacts)", "the MLflow server and the platform's tasks", "MLflow clients", "—"),
]

TRUST: list[tuple[str, str, str]] = [
    (
        "The data form's input and images root",
        "must lie under a configured input root (S3 bucket/prefix or local folder in `GROUNDING_OPS_INPUT_ROOTS`; "
        "default `s3://<bucket>/incoming`), symlinks resolved; `/proc/self/environ`, `/etc/passwd` and other buckets "
        "are refused before a byte is read",
        "tests/test_trust_boundaries.py::test_the_form_refuses_locations_outside_the_input_roots",
    ),
    (
        "Keys the data form does not declare",
        "refused (a conf key such as `dataset_name` cannot steer the run)",
        "tests/test_trust_boundaries.py::test_the_form_refuses_undeclared_conf_keys",
    ),
    (
        "Raw input echoed into the published quarantine",
        "bounded: at most 2,000 characters of a row, else a preview with its length and sha256",
        "tests/test_trust_boundaries.py::test_quarantine_never_echoes_unbounded_raw_input",
    ),
    (
        "S3 listings of a folder",
        "only keys inside the folder: `global_step_10` never lists `global_step_100`",
        "tests/test_trust_boundaries.py::test_listing_a_step_never_returns_a_longer_steps_objects",
    ),
    (
        "Object keys that would land outside a download folder",
        "absolute keys (`a//b`), `.`/`..` segments, backslashes and NUL are refused before anything is written",
        "tests/test_trust_boundaries.py::test_download_tree_refuses_keys_that_leave_the_destination",
    ),
    (
        "Manifest names outside the version folder",
        "DatasetVerificationError",
        "tests/test_trust_boundaries.py::test_a_manifest_naming_a_file_outside_its_version_is_refused",
    ),
    (
        "Staging objects changed after validation",
        "export refuses them (sha256 recorded by validate)",
        "tests/test_trust_boundaries.py::test_export_refuses_staging_objects_changed_after_validation",
    ),
    (
        "Checkpoint files changed after upload (same size)",
        "refused before resume (sha256 recorded by the trainer)",
        "tests/test_training_checkpoints.py::test_same_size_tampering_is_caught_by_the_recorded_checksum",
    ),
    (
        "Checkpoint markers without checksums",
        "refused before resume",
        "tests/test_training_checkpoints.py::test_a_marker_without_checksums_is_refused_before_resume",
    ),
]

KIND_TEST = {
    "annotation": "tests/test_bad_inputs.py::test_annotation_case_is_quarantined_with_its_reason",
    "image": "tests/test_bad_inputs.py::test_annotation_case_is_quarantined_with_its_reason",
    "params": "tests/test_bad_inputs.py::test_params_refuse_bad_values",
    "params-normalized": "tests/test_bad_inputs.py::test_params_pass_integral_numbers_to_the_trainer_as_integers",
    "reward": "tests/test_bad_inputs.py::test_reward_never_raises",
    "manifest": "tests/test_bad_inputs.py::test_manifest_refused",
    "data-form": "tests/test_bad_inputs.py::test_data_form_refuses_hostile_values",
}

EXTRA_BAD_INPUT: list[tuple[str, str, str]] = [
    (
        "All annotation cases in one run",
        "counts reconcile across files and readers",
        "tests/test_bad_inputs.py::test_all_bad_cases_in_one_run_reconcile",
    ),
    (
        "quarantine.jsonl syntax",
        "strict JSON (no bare NaN/Infinity)",
        "tests/test_bad_inputs.py::test_quarantine_lines_are_strict_json",
    ),
    (
        "dataset_version with a trailing newline",
        "refused by the form",
        "tests/test_bad_inputs.py::test_dataset_version_refuses_trailing_newline",
    ),
    (
        "Control characters / shell string as container command",
        "refused before Docker",
        "tests/test_bad_inputs.py::test_container_command_refuses_control_characters",
    ),
    (
        "Hostile value that passes the form",
        "stays one argv element, never shell-parsed",
        "tests/test_bad_inputs.py::test_hostile_values_stay_single_arguments",
    ),
    (
        "`grounding-ops prepare` over the quarantine threshold",
        "exit 1, one `error:` line with the quarantine path",
        "tests/test_bad_inputs.py::test_cli_rows_over_threshold_exit_1_with_summary",
    ),
    (
        "`grounding-ops prepare` on a missing / empty / unknown-format / unparseable input",
        "exit 2 (exit 1 for the unparseable document, all rows quarantined), one `error:` line, no traceback",
        "tests/test_bad_inputs.py::test_cli_missing_input_is_one_line_error",
    ),
]


def _outcome(cases: list[dict]) -> str:
    kind = cases[0]["kind"]
    if kind in ("annotation", "image"):
        reasons: Counter[str] = Counter()
        for case in cases:
            expect = case["expect"]
            if "error" in expect:
                reasons[f"error: {expect['error']}"] += 1
            elif not expect["quarantine"]:
                reasons["accepted" + (" (skipped, counted)" if expect.get("skipped") else "")] += 1
            for q in expect.get("quarantine", []):
                reasons[f"quarantined: `{q['reason']}`"] += 1
        return "; ".join(f"{r} ×{n}" if n > 1 else r for r, n in sorted(reasons.items()))
    if kind == "params":
        return "refused by the form (ParamValidationError) before any task runs"
    if kind == "params-normalized":
        return "accepted (JSON's 2.0 is the integer 2); the trainer gets the integer (`rollout_n=2`)"
    if kind == "reward":
        return "score 0, never raises (every protocol, score_response and VeRL compute_score)"
    if kind == "data-form":
        return "refused before anything is read: outside the input roots, `..`, or an undeclared key"
    return "; ".join(sorted({f'DatasetVerificationError: "{c["expect"]["error"]}"' for c in cases}))


def render() -> str:
    cases = json.loads(INDEX.read_text())["cases"]
    groups: OrderedDict[str, list[dict]] = OrderedDict()
    for case in cases:
        groups.setdefault(case["class"], []).append(case)
    lines = [
        "# Reliability and security",
        "",
        "Generated by `scripts/reliability_table.py` from `tests/data/bad/index.json` and the test list in",
        "the script; `tests/test_reliability_doc.py` fails when this file is stale or names a missing test.",
        "",
        "## Faults",
        "",
        "| Fault | What happens | Test |",
        "|---|---|---|",
    ]
    lines += [f"| {f} | {w} | {f'`{t}`' if t else '—'} |" for f, w, t in FAULTS]
    lines += [
        "",
        f"## Bad input ({len(cases)} cases in `tests/data/bad/`)",
        "",
        "| Class | Cases | Examples | What happens | Test |",
        "|---|---|---|---|---|",
    ]
    for cls, members in groups.items():
        examples = ", ".join(c["what"] for c in members[:4]) + (", ..." if len(members) > 4 else "")
        lines.append(
            f"| {cls} | {len(members)} | {examples} | {_outcome(members)} | `{KIND_TEST[members[0]['kind']]}` |"
        )
    lines += ["", "| Check | What happens | Test |", "|---|---|---|"]
    lines += [f"| {c} | {w} | `{t}` |" for c, w, t in EXTRA_BAD_INPUT]
    lines += ["", "## Security", "", "| Property | What happens | Test |", "|---|---|---|"]
    lines += [f"| {p} | {w} | `{t}` |" for p, w, t in SECURITY]
    lines += [
        "",
        "## Trust boundaries",
        "",
        "Who may write which bucket prefix, and what stops a foreign writer:",
        "",
        "| Prefix | Written by | Read by | A foreign writer |",
        "|---|---|---|---|",
    ]
    lines += [f"| {p} | {w} | {r} | {f} |" for p, w, r, f in PREFIXES]
    lines += ["", "| Boundary | What happens | Test |", "|---|---|---|"]
    lines += [f"| {p} | {w} | `{t}` |" for p, w, t in TRUST]
    lines += [
        "",
        "Regenerate the corpus with `python tests/data/bad/make_cases.py` and this file with",
        "`python scripts/reliability_table.py`.",
        "",
    ]
    return "\n".join(lines)


def referenced_tests() -> list[str]:
    return sorted({t for _, _, t in FAULTS + SECURITY + TRUST + EXTRA_BAD_INPUT if t} | set(KIND_TEST.values()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail when docs/reliability.md is stale")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not DOC.exists() or DOC.read_text() != text:
            print(f"{DOC.relative_to(REPO)} is stale: run python scripts/reliability_table.py", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(text)
    print(f"wrote {DOC.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
