"""Every number the verdict turns on, named once with its source; the report and the tests share them."""

from __future__ import annotations

# Guides: "always measure prompting with at least 5 examples before fine-tuning".
MIN_PROMPT_SHOTS = 5
# Guides: best prompt within 5 points of the best fine-tuned method -> ship the prompt. fewtune applies the
# same margin to the no-LLM reference, and uses it as the smallest gap worth settling with more test rows.
MARGIN_POINTS = 5.0
# Guides: fine-tuning ahead by 15+ points -> fine-tuning pays.
FINE_TUNE_LEAD_POINTS = 15.0
# Guides: "around 100,000 calls/day or more" is where fine-tuning's per-request saving adds up.
HIGH_VOLUME_PER_DAY = 100_000
# Guides: "under ~10,000 calls/day the token saving rarely pays the engineering time".
LOW_VOLUME_PER_DAY = 10_000
# Conventional significance level (Fisher): a paired difference with p < 0.05 counts.
SIGNIFICANCE_ALPHA = 0.05
# Landis & Koch (1977), Biometrics 33:159, on Cohen's kappa: 0-0.20 "slight", 0.21-0.40 "fair", 0.41-0.60
# "moderate" agreement. Below moderate the best method is not good enough yet; a prompt below fair is
# treated as near chance (not doing the task).
GOOD_ENOUGH_KAPPA = 0.4
NEAR_CHANCE_KAPPA = 0.2
