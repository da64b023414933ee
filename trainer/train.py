"""One training run, top to bottom; takes a frozen config, never reads flags.

resolve folders -> strategy -> data -> model -> restore -> fit (one or two
phases) -> evaluate the best weights -> write reports -> export -> clean up.
Each stage is a call whose inputs and outputs are plain values; docs/design.md
names the file of each. The training loop itself is
:class:`trainer.loop.DistributedLoop` (see docs/trainer.md for why).
"""

import contextlib
import json

from contracts import dataset, jobdir, mirror, policy, record_check, storage, voice
from trainer import distribute, stages

VOICE = voice.Voice("trainer")

PREEMPTED_EXIT_CODE = 143
# Not 2 (bad input) nor 143 (preempted): a restart policy can stop on it, since
# rerunning resumes from the same backup and diverges again.
DIVERGED_EXIT_CODE = 3


class Preempted(Exception):  # noqa: N818 - a signal, not an error
    """Raised after a stop request (SIGTERM) once the training state is backed up."""


class Diverged(Exception):  # noqa: N818 - the run's outcome, named like Preempted
    """Raised when a loss or a weight became NaN or infinite; the last good backup is kept."""


def output_folders(config):
    """Returns ``name -> uri`` of every output folder of the run."""
    return {
        "job": config.job_dir,
        "logs": config.log_dir,
        "checkpoints": config.checkpoint_dir,
        "backup": config.backup_dir,
        "export": config.export_dir,
    }


@distribute.holding_job_dir_lease(VOICE.warn)  # One run at a time per job dir (contracts/lease.py).
def run(config, stop_flag=None, clock=None):
    """Trains, evaluates and exports one model as ``config`` says.

    Args:
        config: A :class:`trainer.config.TrainConfig`.
        stop_flag: A :class:`trainer.distribute.StopFlag`; a new one handles SIGTERM when ``None``.
        clock: The run's :class:`trainer.stages.StageClock` (started by the CLI); a new one when ``None``.

    Returns:
        The metrics dict written to ``metrics.json``.

    Raises:
        Preempted: Training stopped on request; the state is backed up.
        Diverged: A loss or a variable became NaN or infinite; the last good backup is kept.
        contracts.dataset.DataError: Bad dataset.
        contracts.jobdir.JobDirError: The job dir holds an incompatible run.
    """
    clock = clock or stages.StageClock()
    # 1. Folders and strategy. Logical devices must be configured before
    # TensorFlow initializes, collective ops before any TensorFlow op runs.
    distribute.configure_devices(config.num_cpu_devices)
    import keras
    import tensorflow as tf

    from trainer import (
        augment,
        backup,
        callbacks,
        class_weights,
        data,
        evaluation,
        export,
        loop,
        mixing,
        models,
        optimizers,
        precise_bn,
        report,
        state,
    )

    clock.lap("import")
    chief = distribute.is_chief()
    outputs = mirror.JobOutputs(output_folders(config), chief=chief)
    jobdir.check_arch(config.job_dir, outputs.read_text("job", jobdir.CONFIG_FILE), config.arch)
    strategy = distribute.make_strategy(config.strategy, config.num_cpu_devices)
    replicas = strategy.num_replicas_in_sync
    if config.batch_size % replicas:
        raise ValueError(f"batch size {config.batch_size} is not divisible by {replicas} replicas")

    # 2. Data: metadata and every shard checked before anything trains.
    info = dataset.load_metadata(config.data_dir)
    dataset.verify_data(info)
    record_check.check_records(info)  # Labels, types and image size: one error naming the shard.
    jobdir.check_classes(
        config.job_dir, outputs.read_text("job", jobdir.CLASSES_FILE), info.metadata["classes"]
    )
    config = config.for_images(info.image_size)  # The crop side follows the images' (config.json has it).
    final_splits = evaluation.final_splits(info)
    if evaluation.TEST not in final_splits:
        VOICE.warn(evaluation.NO_TEST_WARNING)
    train_counts = class_weights.train_class_counts(info)
    weights = class_weights.weights_for(config.class_weight, train_counts)
    if weights is not None:
        VOICE.say(class_weights.describe(weights, info.class_names))
    elif warning := class_weights.imbalance_warning(train_counts, info.class_names):
        VOICE.warn(warning)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(config.seed)
    if chief:
        _write_job_files(outputs, config, info)
    VOICE.say(f"strategy {distribute.strategy_name(strategy)} with {replicas} replicas; chief={chief}")
    stop_flag = stop_flag or distribute.StopFlag().install()

    # 3. Where to start: the newest intact generation of a backup left by a preempted run, if any.
    outputs.download("backup")
    backups = backup.scan(outputs.local("backup"))
    newest = backups.usable[0].state if backups.usable else {"epoch": 0}
    frozen = config.frozen_epochs > 0 and newest["epoch"] < config.frozen_epochs

    # 4. Model, loop, callbacks; then the backup restored into them.
    build_options = model_build_options(config, models.get_defaults(config.arch), info.image_size)
    steps_per_epoch = config.steps_per_epoch or max(1, info.num_batches("train", config.batch_size, True))
    model, main_model = _build_model(config, info, strategy, build_options, frozen, steps_per_epoch)
    if config.export and (warning := export.gradcam_layer(config.arch, main_model)[1]):
        VOICE.warn(warning)  # Now, not after training.
    device_augmenter = None
    augment_options = config.augment_options()
    if config.augment_on == "device" and data.augments(config.policy, **augment_options):
        device_augmenter = augment.Augmenter(
            config.policy, info.image_size, config.crop_size, **augment_options
        )
    training_loop = loop.DistributedLoop(
        strategy,
        model,
        main_model,
        num_classes=info.num_classes,
        global_batch_size=config.batch_size,
        aux_loss_weight=config.aux_loss_weight,
        augmenter=device_augmenter,
        seed=config.seed,
        jit_compile=config.jit_compile,
        mixer=mixing.Mixer(
            info.num_classes, mixup=config.mixup, cutmix=config.cutmix, label_smoothing=config.label_smoothing
        ),
        clip_norm=config.clip_norm,
        class_weights=weights,
    )
    refresh_statistics = _precise_bn(config, info, strategy, model, steps_per_epoch, precise_bn)
    training_state = state.TrainingState(model, chief=chief, guard=training_loop.check_finite)
    # Restoring builds the optimizer's variables, which a distributed strategy creates only in its scope.
    # A damaged generation is skipped with one warning line: the previous one, or a fresh start.
    with strategy.scope():
        resume = training_state.restore(backups, log=VOICE.warn)
    initial_epoch, initial_step = (resume["epoch"], resume["step_in_epoch"]) if resume else (0, 0)
    # A tuning trial: only the chief's metrics file is read, one reporter for every epoch and the end.
    tuning = report.HypertuneReporter(config.hypertune_metric) if chief and config.hypertune_metric else None
    run_callbacks, early_stopping, shortcut_watch = callbacks.make_callbacks(
        config,
        tuning=tuning,
        info=info,
        main_model=main_model,
        outputs=outputs,
        chief=chief,
        training_state=training_state,
        initial_epoch=initial_epoch,
        fresh_start=resume is None,
        steps_per_epoch=steps_per_epoch,
        speaker=VOICE,
    )
    if resume:
        # The device-side augmentation seeds from the global step: restored, it is pure in (epoch, step).
        training_loop.step_counter.assign(initial_epoch * steps_per_epoch + initial_step)
        VOICE.say(f"resumed at epoch {initial_epoch} step {initial_step} from {resume['generation']}")

    # 5. Fit: one phase, or a frozen warm-up then everything.
    fit_args = {
        "steps_per_epoch": steps_per_epoch,
        "callbacks": keras.callbacks.CallbackList([stages.callback(clock), *run_callbacks], model=model),
        "valid_dataset": data.distributed(strategy, config, info, "valid", training=False),
        "validation_steps": config.validation_steps,
        "stop_requested": distribute.stop_check(strategy, stop_flag, config.stop_check_every_steps),
        "batch_logs_wanted": VOICE.stream.isatty(),
        "refresh_statistics": refresh_statistics,
    }
    with dataset.translate_data_errors(info), _stop_if_diverged(config.backup_dir, outputs.local("backup")):
        phases = [(min(config.frozen_epochs, config.epochs), True)] if frozen else []
        phases.append((config.epochs, False))
        epoch, step = initial_epoch, initial_step
        for end, backbone_frozen in phases:
            # The training stream is a pure function of (seed, epoch, step): each
            # phase's stream starts where that phase starts.
            train_dataset = data.distributed(
                strategy, config, info, "train", training=True, start=(epoch, step, steps_per_epoch)
            )
            result = training_loop.fit(
                train_dataset, epochs=end, initial_epoch=epoch, initial_step=step, **fit_args
            )
            if result.interrupted or model.stop_training or end >= config.epochs:
                break
            if backbone_frozen:
                _unfreeze(config, strategy, model, training_loop, training_state, steps_per_epoch)
                if refresh_statistics is not None:
                    refresh_statistics.reset()
                if fit_args["stop_requested"](True):
                    # Stopped in the frozen phase's last epoch: saved now, the new optimizer built,
                    # not after tracing the unfrozen step (a minute for a large backbone on a CPU).
                    result.interrupted, result.step_in_epoch = True, 0
                    break
            epoch, step = result.epochs_completed, 0
        clock.lap("steps")
        if result.interrupted:
            training_state.save(
                outputs.local("backup"), epoch=result.epochs_completed, step_in_epoch=result.step_in_epoch
            )
            outputs.sync()
            VOICE.say(f"backup saved at epoch {result.epochs_completed} step {result.step_in_epoch}")
            raise Preempted(f"stopped at epoch {result.epochs_completed} step {result.step_in_epoch}")

        # 6. Evaluate the best weights (early stopping restored them), or with --ema the weights'
        # moving average, on valid and test (if any), with the batch-norm statistics of those weights.
        if optimizers.use_average_weights(model):
            VOICE.say(f"evaluating, saving and exporting the weights' moving average (decay {config.ema})")
        if refresh_statistics is not None:
            refresh_statistics()
        # The code of `python -m trainer.evaluate` too, so it reproduces these numbers.
        evaluations, confusion = {}, {}
        for split in final_splits:
            split_dataset = data.distributed(strategy, config, info, split, training=False)
            evaluations[split], confusion[split] = evaluation.evaluate_split(
                training_loop, split_dataset, info.class_names
            )
        calibrated = None
        if config.calibration == "temperature":
            plain = {split: data.for_run(config, info, split, training=False) for split in final_splits}
            calibrated, measured = evaluation.calibrate(main_model, plain)
        clock.lap("evaluation")
    metrics = report.final_metrics(
        config=config,
        info=info,
        strategy=strategy,
        result=result,
        best_epoch=early_stopping.best_epoch if early_stopping.best is not None else None,
        stopped_early=model.stop_training,
        steps_per_epoch=steps_per_epoch,
        evaluations=evaluations,
        chance=report.chance_level(confusion["valid"]),
        # The shortcut alarm's final check: Grad-CAM of the kept weights on the probe set.
        explanations=shortcut_watch.final_summary(evaluations["valid"]["accuracy"]),
    )
    if calibrated is not None:
        metrics["calibration"] = calibrated
    if not metrics["chance"]["better_than_chance"]:
        VOICE.warn(report.chance_warning(metrics["chance"]))
    if config.debug_dump_weights:
        report.dump_weights(model, config.debug_dump_weights)

    # 7. Reports, export, tuning metric; 8. clean up the backup and upload.
    if chief:
        report.write_metrics(outputs.local("job", jobdir.METRICS_FILE), metrics)
        per_class = outputs.local("job", jobdir.PER_CLASS_FILE)
        # The per-class report is test's, or valid's when the dataset holds no test images.
        shown = final_splits[-1]
        report.write_per_class_csv(per_class, confusion[shown], info.wnids, info.class_names)
        report.write_confusion_summary(
            outputs.local("logs"),
            confusion[shown],
            step=result.epochs_completed,
            split=shown,
            most_confused=metrics[shown]["most_confused"],
        )
        report.write_final_scalars(outputs.local("logs"), metrics, step=result.epochs_completed)
        if calibrated is not None:
            report.write_reliability_summary(
                outputs.local("logs"), *measured, calibrated, step=result.epochs_completed
            )
        # model.keras holds the weights evaluated above (early stopping restored the
        # best), also when no epoch of this run beat the best it resumed or branched from.
        callbacks.save_model(main_model, outputs.local("job", jobdir.MODEL_FILE))
        if config.export:
            export.export_model(
                main_model,
                outputs.local("export"),
                arch=config.arch,
                build_options=build_options,
                info=info,
                policy=config.policy,
                crop_size=config.crop_size,
                temperature=None if calibrated is None else calibrated["temperature"],
            )
        if tuning is not None:  # After the per-epoch reports (steps 1..N): the trial's final measurement.
            tuning.report(evaluations["valid"]["accuracy"], step=result.epochs_completed + 1)
        outputs.delete("backup")
        outputs.sync()
    clock.lap("export")
    for line in report.summary_lines(metrics, final_splits, info.class_names):
        VOICE.say(line)
    VOICE.say(clock.summary())
    return metrics


def model_build_options(config, defaults, image_size):
    """Returns the keyword arguments of ``models.build_model`` for this run."""
    options = {
        "input_size": policy.output_size(config.policy, image_size, config.crop_size),
        "dropout": config.dropout,
        "weights": config.weights,
        "bn_momentum": config.bn_momentum,
        "sync_bn": config.sync_bn,
        "backbone_size": config.backbone_size,
    }
    if defaults.aux_outputs:
        options["aux_dropout"] = config.aux_dropout
    return options


def _write_job_files(outputs, config, info):
    """Writes ``config.json`` and ``classes.json`` (prediction needs class names without the data)."""
    storage.write_bytes(outputs.local("job", jobdir.CONFIG_FILE), config.to_json().encode("utf-8"))
    classes = json.dumps(info.metadata["classes"], indent=1)
    storage.write_bytes(outputs.local("job", jobdir.CLASSES_FILE), classes.encode("utf-8"))
    outputs.sync()


def _build_model(config, info, strategy, build_options, frozen, steps_per_epoch):
    """Builds and compiles the model in the strategy's scope; returns ``(model, main_model)``."""
    import keras

    from trainer import models, optimizers

    keras.mixed_precision.set_dtype_policy(config.mixed_precision)
    with strategy.scope():
        model = models.build_model(config.arch, info.num_classes, seed=config.seed, **build_options)
        main_model = models.main_output_model(model)
        if frozen:
            models.set_backbone_trainable(model, False)
        # A run resumed after its frozen phase builds the second phase's optimizer.
        start_epoch = 0 if frozen else config.frozen_epochs
        optimizer = optimizers.make_optimizer(
            config,
            model,
            learning_rate=config.learning_rate,
            steps_per_epoch=steps_per_epoch,
            start_epoch=start_epoch,
        )
        model.compile(optimizer=optimizer, jit_compile=False)
    return model, main_model


def _unfreeze(config, strategy, model, training_loop, training_state, steps_per_epoch):
    """Phase two: train everything with a fresh optimizer.

    A plateau schedule continues at the current learning rate; a cosine
    schedule continues from the first phase's last step.
    """
    from trainer import models, optimizers

    previous = model.optimizer
    schedule = optimizers.has_schedule(previous)
    learning_rate = config.learning_rate if schedule else optimizers.current_learning_rate(previous)
    training_state.carry_over()
    with strategy.scope():
        models.set_backbone_trainable(model, True)
        optimizer = optimizers.make_optimizer(
            config,
            model,
            learning_rate=learning_rate,
            steps_per_epoch=steps_per_epoch,
            start_epoch=config.frozen_epochs,
        )
        model.compile(optimizer=optimizer, jit_compile=False)
        model.optimizer.build(model.trainable_variables)
    training_loop.reset()
    VOICE.say("backbone unfrozen: training every layer")


def _precise_bn(config, info, strategy, model, steps_per_epoch, precise_bn):
    """Returns the run's precise batch-norm pass over clean training batches, or ``None`` (off)."""
    from trainer import data

    batches = config.precise_bn
    if batches is None:
        train_batches = info.num_batches("train", config.batch_size)
        batches = precise_bn.auto_batches(config.batch_size, train_batches, steps_per_epoch)
    if not batches:
        return None
    images = min(batches * config.batch_size, info.split_counts["train"])
    VOICE.say(f"precise batch norm: statistics from {images} clean training images before each validation")
    clean_train = data.distributed(strategy, config, info, "train", training=False)
    return precise_bn.PreciseBatchNorm(strategy, model, batches, clean_train)


@contextlib.contextmanager
def _stop_if_diverged(backup_uri, backup_dir):
    """Turns a non-finite loss into :class:`Diverged`, naming the backup it leaves in place."""
    from trainer import loop, state

    try:
        yield
    except loop.NonFiniteError as error:
        kept = state.read_state(backup_dir)
        where = "no backup was saved before"
        if kept is not None:
            position = f"epoch {kept['epoch']} step {kept['step_in_epoch']}"
            where = f"the last good backup ({position}) is kept in {backup_uri}"
        raise Diverged(f"{error}; {where}") from None
