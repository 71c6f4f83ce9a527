"""The eval stage: base vs fine-tuned model on the merged test split and hand-written CNCF sets.

Modules: generate (batched greedy answers), metrics (ROUGE-L/BLEU/chrF, bootstrap CIs), perplexity (assistant-token
log-likelihoods), mcq (option log-likelihood accuracy), contamination (13-gram overlap with train), report
(metrics/report.md + PNG plots), pipeline (the whole run). Run it as `python -m stages.eval`.
"""
