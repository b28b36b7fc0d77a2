"""Every number the verdict turns on, named once with its source; the report and the tests share them."""

from __future__ import annotations

# Guides: "always measure prompting with at least 5 examples before fine-tuning".
MIN_PROMPT_SHOTS = 5
# Guides: best prompt within 5 points of the best fine-tuned method -> ship the prompt. That margin is an
# indifference threshold between a cheaper and a dearer option: fewtune applies it to every pair of options,
# ordered by their measured total cost (decide/options.py), and uses it as the smallest gap worth settling
# with more test rows.
MARGIN_POINTS = 5.0
# Guides: "under ~10,000 calls/day the token saving rarely pays the engineering time".
LOW_VOLUME_PER_DAY = 10_000
# Conventional significance level (Fisher): a paired difference with p < 0.05 counts.
SIGNIFICANCE_ALPHA = 0.05
# Landis & Koch (1977), Biometrics 33:159, on Cohen's kappa: 0-0.20 "slight", 0.21-0.40 "fair", 0.41-0.60
# "moderate" agreement. Below moderate the best method is not good enough yet; a prompt below fair is
# treated as near chance (not doing the task).
GOOD_ENOUGH_KAPPA = 0.4
NEAR_CHANCE_KAPPA = 0.2

# Release thresholds, shared by the report's rollout plan, `fewtune gate` and `fewtune monitor` (a policy
# file overrides them). They are fewtune's defaults, not an industry standard.
# Roll back when live p95 latency exceeds the measured p95 by 50%: beyond the 10-20% run-to-run spread of
# p95 over 20 timed requests (fewtune default).
ROLLBACK_P95_FACTOR = 1.5
# Roll back when more than 1% of requests fail (timeouts, errors, answers that are not a label): a common
# 99% availability objective (fewtune default).
ROLLBACK_ERROR_RATE = 0.01
# Roll back when the billed cost per request exceeds the estimate by 20% (fewtune default).
ROLLBACK_COST_FACTOR = 1.2
# Share of traffic on the new method before full rollout, and for how long (fewtune default).
CANARY_TRAFFIC_SHARE = 0.05
CANARY_HOURS = 24
# Per-class (per-label, per-field) floor for a release: a candidate may not lose more than this many points
# of a class's recall against the baseline (fewtune default: twice the overall margin, because one class is
# measured on a fraction of the rows). A class fails only when its recall is shown to be below the floor: the
# one-sided Clopper-Pearson upper bound, Bonferroni-corrected across the classes checked, is under it.
CLASS_DROP_POINTS = 10.0
# Two options whose totals over the horizon are within 20% of each other are not ordered by cost: the higher
# score is the default. The totals rest on estimates (round engineering hours: a day for a prompt, a week for
# an adapter; list $/hour; an assumed utilization), and fewtune already holds a billed cost per request up to
# 20% above its estimate to be within the estimate's tolerance (ROLLBACK_COST_FACTOR rolls back only beyond
# it): totals closer than that are not told apart by the cost model (fewtune default).
CLOSE_COST_SHARE = round(ROLLBACK_COST_FACTOR - 1, 6)
