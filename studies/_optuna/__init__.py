"""tunefleet's one door to Optuna's private names: nothing outside this package may reach one.

Optuna's public API has no way to write a trial's rows in one transaction, read a study's trials
in bulk, change how TPE weighs its candidates, or rebuild an ask or a tell step by step. Each of
those needs a private name, and a private name can move in any release. So they all live here,
each listed below (the name, the module here that uses it, and what public API lacks), and
tests/unit/test_optuna_door.py fails on two things: a private Optuna name reached from any other
module (naming file and line), and a name listed here that the installed Optuna no longer has
(the early warning `make test-latest` gives before a new release breaks a claim).

Table models (models.py, trial_rows.py, trial_reads.py; bench/ imports them through models.py).
Optuna's storage API writes a trial in one transaction per parameter and attribute and has no
count, page or bulk read; tunefleet issues that SQL against Optuna's own tables:

- ``optuna.storages._rdb.models.BaseModel``: models.py, every Optuna table (bench grants and cleans them).
- ``optuna.storages._rdb.models.StudyModel``: models.py, trial_rows.py, catalog.py and lifecycle.py through models.py;
  a study's row (alive check, numbering lock, the lock before a delete, the reaper's look for running trials of studies tunefleet does not know).
- ``optuna.storages._rdb.models.TrialModel``: trial_rows.py, catalog.py and lifecycle.py through models.py; counts, pages, claims;
  study_page.py through trial_rows.py, a page of studies' counts, best trials and fronts.
- ``optuna.storages._rdb.models.TrialParamModel``: trial_rows.py; a claim's parameters in one insert.
- ``optuna.storages._rdb.models.TrialValueModel``: trial_rows.py; a finished trial's value and its stored form.
  study_page.py; a page of studies' best trials and front values in one query each.
- ``optuna.storages._rdb.models.TrialUserAttributeModel``: trial_rows.py, and catalog.py through models.py; a trial's
  tags in one upsert, its worker tag read with its locked row (is it still the claim's trial), and (study_page.py)
  a page of studies' data warnings in one read.
- ``optuna.storages._rdb.models.TrialIntermediateValueModel``: trial_rows.py, trial_reads.py; per-epoch values,
  written in the transaction that checks the trial is still the claim's (Trial.report writes by id alone).
- ``optuna.storages._rdb.models.TrialSystemAttributeModel``: trial_reads.py; the bulk read of system attributes.
  trial_rows.py; a finished trial's constraint values, written with its values (Trial.set_constraint takes a
  transaction each).
- ``optuna.storages._rdb.models.TrialHeartbeatModel``: models.py; bench/ cleans its rows.
- ``optuna.storages._rdb.models.NOT_FOUND_MSG``: trial_reads.py; the same KeyError as Optuna's reader.
- ``optuna.study._constrained_optimization._CONSTRAINTS_KEY``: trial_rows.py; the prefix of the system attributes
  Trial.set_constraint writes and FrozenTrial.constraints reads, for a trial's constraint values written with
  its end; study_page.py, a page of studies' constraint values read in one query.

A page of studies (study_page.py). GET /v1/studies shows each study's Pareto front size; Study.best_trials
loads every trial of the study, all of its rows, to count it. The same front from the complete trials' values
and every trial's constraints, for a whole page in two queries:

- ``optuna.study._multi_objective._get_pareto_front_trials_by_trials``: study_page.py; Study.best_trials' front.
- ``optuna.study._constrained_optimization._is_constrained_optimization``: study_page.py; whether Study.best_trials
  keeps only the feasible trials.

Bulk reads (trial_reads.py). Optuna's trial cache fills itself only through this method, with ORM
objects per row (about 3 s of CPU at 5,000 trials); there is no public hook for a faster reader:

- ``optuna.storages.RDBStorage._get_trials``: trial_reads.py overrides it; reference.py calls Optuna's for the contract test.

Ask and tell, step by step (internals.py, claimed_trial.py). A claim samples every parameter and
writes them in one transaction, and a finish ends a trial in one; Study.ask and Study.tell take a
transaction per step and give no way to run their steps one by one:

- ``optuna.pruners._filter_study``: internals.py; the study as the pruner lets a trial see it (Hyperband's bracket).
- ``optuna.distributions._get_single_value``: internals.py; the value of a one-valued range, as Trial._suggest takes it.
- ``optuna.study.Study._thread_local``: internals.py; drop the per-thread trial snapshot so a sample reads afresh.
- ``optuna.trial.Trial._cached_frozen_trial``: internals.py, claimed_trial.py; the trial as reported so far.
- ``optuna.trial.Trial._relative_params``: claimed_trial.py; a Trial built without reading the trial back.
- ``optuna.trial.Trial._fixed_params``: claimed_trial.py; the same.

Cost-aware TPE (cost_aware.py). TPESampler has no public way to change its acquisition, its split
of trials, or its per-trial work; tunefleet overrides or calls these methods and functions:

- ``optuna.samplers.TPESampler._sample``: cost_aware.py overrides it (one snapshot per claim, cached per-trial work).
- ``optuna.samplers.TPESampler._sample_relative``: cost_aware.py; a relative sample without Optuna's extra write.
- ``optuna.samplers.TPESampler._get_internal_repr``: cost_aware.py overrides it (rows kept per process); reference.py.
- ``optuna.samplers.TPESampler._compute_acquisition_func``: cost_aware.py overrides it (minus predicted cost).
- ``optuna.samplers.TPESampler._build_parzen_estimator``: cost_aware.py, reference.py.
- ``optuna.samplers.TPESampler._compare``: cost_aware.py; the best candidate by acquisition value.
- ``optuna.samplers.TPESampler._get_params``: cost_aware.py; a trial's parameters as TPE reads them.
- ``optuna.samplers.TPESampler._constant_liar``, ``optuna.samplers.TPESampler._gamma``,
  ``optuna.samplers.TPESampler._group``, ``optuna.samplers.TPESampler._rng``,
  ``optuna.samplers.TPESampler._n_ei_candidates``: cost_aware.py; the settings TPESampler was built with.
- ``optuna.samplers.TPESampler._search_space``: cost_aware.py puts intersection.py's in its place: the multivariate
  TPE's joint space, updated from the trials finished since (Optuna's walks all after the oldest unfinished one);
  reference.py.
- ``optuna.study.Study._get_trials``: cost_aware.py, intersection.py; the cached snapshot of trials TPE itself reads.
- ``optuna.samplers._tpe.sampler._get_infeasible_trial_score``: cost_aware.py; a trial's constraint violation.
- ``optuna.samplers._tpe.sampler._split_trials``: cost_aware.py gives its split faster (a stable numpy sort, cached scores).
- ``optuna.samplers._tpe.sampler._split_complete_trials``: cost_aware.py (multi-objective), reference.py.
- ``optuna.samplers._tpe.sampler._split_pruned_trials``: cost_aware.py.
- ``optuna.samplers._tpe.sampler._split_infeasible_trials``: cost_aware.py.
- ``optuna.samplers._tpe.sampler.default_gamma``,
  ``optuna.samplers._tpe.sampler.default_gamma_multiobjective``: cost_aware.py; TPE's default split sizes.
- ``optuna.samplers._tpe.parzen_estimator._ParzenEstimator``: cost_aware.py, reference.py; the estimator type.
- ``optuna.samplers._tpe.parzen_estimator._ParzenEstimator._transform``: cost_aware.py, reference.py; candidates as the mixture reads them.

Mixture density and log_ndtr (mixture_density.py, log_ndtr.py). The same values as Optuna's in
fewer passes (a third of a claim at 5,000 trials), so they read Optuna's mixture and its helpers:

- ``optuna.samplers._tpe.probability_distributions._MixtureOfProductDistribution``: mixture_density.py, reference.py.
- ``optuna.samplers._tpe.probability_distributions._BatchedCategoricalDistributions``: mixture_density.py.
- ``optuna.samplers._tpe.probability_distributions._BatchedTruncNormDistributions``: mixture_density.py.
- ``optuna.samplers._tpe.probability_distributions._BatchedTruncLogNormDistributions``: mixture_density.py.
- ``optuna.samplers._tpe.probability_distributions._BatchedDiscreteTruncNormDistributions``: mixture_density.py.
- ``optuna.samplers._tpe.probability_distributions._BatchedDiscreteTruncLogNormDistributions``: mixture_density.py.
- ``optuna.samplers._tpe.probability_distributions._unique_inverse_2d``: reference.py; what unique_pairs must equal.
- ``optuna.samplers._tpe.parzen_estimator._ParzenEstimator._mixture_distribution``: cost_aware.py, reference.py.
- ``optuna.samplers._tpe._truncnorm._log_gauss_mass``: mixture_density.py; a truncated normal's log mass.
- ``optuna.samplers._tpe._truncnorm._norm_logpdf``: mixture_density.py; the standard normal's log density.
- ``optuna.samplers._tpe._truncnorm._log_ndtr``: log_ndtr.py swaps in SciPy's ufunc (TPE's hottest loop); reference.py.
- ``optuna.samplers._tpe._truncnorm._log_ndtr_single``: reference.py; Optuna's own values, to compare SciPy's with.

Hyperband's brackets (hyperband.py). Optuna builds a Study for a trial's bracket at each pruner
decision, and each Study looks its id up by name in the store; there is no public way to keep one:

- ``optuna.pruners.HyperbandPruner._create_bracket_study``: hyperband.py overrides it (one per study and bracket).

Contract tests only (reference.py names Optuna's private computations the tests compare with):

- ``optuna.pruners.HyperbandPruner._get_bracket_id``: reference.py; which bracket a trial is in.

Tolerated everywhere, not fenced: ``optuna.trial.FrozenTrial._trial_id``, ``optuna.trial.Trial._trial_id``,
``optuna.study.Study._study_id`` and ``optuna.study.Study._storage``. They are the only spelling of a
trial's and a study's id in the store and of a study's storage, and service/, worker/ and the
tests use them as Optuna's own integrations do; the existence check covers them too.
"""
