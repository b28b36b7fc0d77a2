"""A trained row's typed sections write its training fields in the order results.json has always held them."""

from __future__ import annotations

from fewtune.results.builders import training_fields
from fewtune.results.sections import HostedComparison, HostedJob, LocalTraining, ReferenceFit

LOCAL = LocalTraining(
    train_seconds=12.5,
    train_tokens_per_second=800.0,
    train_flops_per_token=1.5e9,
    train_mfu=0.2,
    train_steps=30,
    resumed_at_step=0,
    class_balance="none",
    adapter_path="run/adapters/lora-n100",
    adapter_bytes=4096,
    peak_memory_bytes=None,
    trained_parameters=1000,
    train_processes=1,
    precision="float32",
)
LOCAL_KEYS = [
    "train_seconds",
    "train_tokens_per_second",
    "train_flops_per_token",
    "train_mfu",
    "train_steps",
    "resumed_at_step",
    "class_balance",
    "adapter_path",
    "adapter_bytes",
    "peak_memory_bytes",
    "trained_parameters",
    "train_processes",
    "precision",
]


def test_a_prompt_has_only_a_null_train_seconds() -> None:
    assert training_fields(None) == {"train_seconds": None}


def test_a_local_training_writes_its_fields_in_order() -> None:
    assert list(training_fields(LOCAL)) == LOCAL_KEYS
    quantized = LocalTraining(**{**LOCAL.__dict__, "quantization": "nf4"})
    prompted = quantized.prompted("plain")
    assert list(training_fields(prompted)) == [*LOCAL_KEYS, "quantization", "kshot_training"]
    assert training_fields(prompted)["kshot_training"] == "plain"
    assert quantized.kshot_training is None  # prompted() returns a new record


def test_a_hosted_job_writes_train_seconds_first_and_its_comparison_when_it_has_one() -> None:
    job = HostedJob(
        fine_tuned_model="ft:base:org:fewtune:1",
        fine_tuning_job="ftjob-1",
        hosted_endpoint="http://localhost:8000/v1",
        trained_tokens=None,
        train_seconds=None,
        hosted_hyperparameters={"n_epochs": 3},
        validation_examples=10,
        hosted_result_files=("result-a.json",),
    )
    keys = [
        "train_seconds",
        "fine_tuned_model",
        "fine_tuning_job",
        "hosted_endpoint",
        "trained_tokens",
        "hosted_hyperparameters",
        "validation_examples",
        "hosted_result_files",
    ]
    assert list(training_fields(job)) == keys
    assert training_fields(job)["hosted_result_files"] == ["result-a.json"]
    comparison = HostedComparison(
        verdict="fine-tune", metric="accuracy", rows=10, few_shot=0.5, fine_tuned=0.8, file="result-a.json"
    )
    compared = HostedJob(**{**job.__dict__, "hosted_comparison": comparison})
    assert list(training_fields(compared)) == [*keys, "hosted_comparison"]
    assert list(training_fields(compared)["hosted_comparison"]) == list(comparison)


def test_a_reference_fit_writes_its_embedding_model_and_classifier() -> None:
    fit = ReferenceFit(train_seconds=0.5, embedding_model="mini", classifier="LogisticRegression(C=1)")
    assert training_fields(fit) == {
        "train_seconds": 0.5,
        "embedding_model": "mini",
        "classifier": "LogisticRegression(C=1)",
    }
