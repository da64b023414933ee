"""Vertex AI hyperparameter tuning over the trainer's CustomJob.

Vertex AI passes each trial's values as ``--<parameter_id>=<value>``, so the
parameter ids below are the trainer's own flag names (the submit command
refuses them after ``--``: :data:`deploy.checks.TUNED_TRAINER_FLAGS`). It also
sets ``CLOUD_ML_HP_METRIC_TAG`` to the study's metric id; the trainer then
reports through cloudml-hypertune under that tag (its default is the same
:data:`METRIC_TAG`) each epoch's validation accuracy at steps 1..N and, last,
the final evaluation's at step N + 1 (``trainer.callbacks.HypertuneReport``).
The study maximizes the last one: the accuracy of the weights the trial keeps.
"""

from google.cloud import aiplatform_v1

from deploy import vertex

# The study's metric: validation accuracy as the trainer reports it with
# hypertune.HyperTune().report_hyperparameter_tuning_metric(hyperparameter_metric_tag=...).
METRIC_TAG = "accuracy"

Spec = aiplatform_v1.StudySpec
Param = Spec.ParameterSpec


def parameter_specs():
    """Returns the searched space: learning rate (log), dropout (linear), batch size (discrete)."""
    return [
        Param(
            parameter_id="learning-rate",
            double_value_spec=Param.DoubleValueSpec(min_value=1e-4, max_value=1e-1),
            scale_type=Param.ScaleType.UNIT_LOG_SCALE,
        ),
        Param(
            parameter_id="dropout",
            double_value_spec=Param.DoubleValueSpec(min_value=0.0, max_value=0.6),
            scale_type=Param.ScaleType.UNIT_LINEAR_SCALE,
        ),
        Param(
            parameter_id="batch-size",
            discrete_value_spec=Param.DiscreteValueSpec(values=[32, 64, 128, 256]),
            scale_type=Param.ScaleType.UNIT_LINEAR_SCALE,
        ),
    ]


def build_tuning_job(spec):
    """Returns the ``aiplatform_v1.HyperparameterTuningJob`` for a :class:`deploy.config.TuneJob`."""
    study = Spec(
        metrics=[Spec.MetricSpec(metric_id=METRIC_TAG, goal=Spec.MetricSpec.GoalType.MAXIMIZE)],
        parameters=parameter_specs(),
        # Bayesian optimization over the space (the service default).
        algorithm=Spec.Algorithm.ALGORITHM_UNSPECIFIED,
        # The final report, not the best epoch's: the trainer already ends on its best (or
        # averaged) weights, and a maximum over noisy per-epoch values is over-optimistic.
        measurement_selection_type=Spec.MeasurementSelectionType.LAST_MEASUREMENT,
    )
    return aiplatform_v1.HyperparameterTuningJob(
        display_name=spec.vertex.job.name,
        study_spec=study,
        max_trial_count=spec.max_trials,
        parallel_trial_count=spec.parallel_trials,
        max_failed_trial_count=spec.max_failed_trials,
        trial_job_spec=vertex.custom_job_spec(spec.vertex),
        labels=vertex.job_labels(spec.vertex.job),
    )


def submit(spec, tuning_job):
    """Creates ``tuning_job`` in the project and region of ``spec.vertex``.

    Returns:
        The resource name of the created job.
    """
    client = vertex.job_service_client(spec.vertex.region)
    return client.create_hyperparameter_tuning_job(
        parent=spec.vertex.parent, hyperparameter_tuning_job=tuning_job
    ).name
