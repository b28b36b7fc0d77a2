"""``fewtune serve``'s fine-tuning API: OpenAI's Files and Fine-tuning endpoints over the served base model.

The unmodified ``openai`` client uploads a chat JSONL training file, creates a job and follows it exactly as
on a provider; the job trains a LoRA adapter in the background (:mod:`.service`), and its model,
``ft:BASE:local:SUFFIX:ID``, is served by the same server the moment the job succeeds. Beyond a provider, the
job's result file holds fewtune's held-out comparison against few-shot prompting (:mod:`.compare`).
Records persist in a state folder (:mod:`.state`); the routes are in :mod:`.routes`.
"""
