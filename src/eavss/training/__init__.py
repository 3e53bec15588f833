"""Targeted training: train only selected decoder layers (full or LoRA).

Modules:
    params       which parameters train (:func:`select_trainable`, :func:`merge_for_save`)
    contrastive  InfoNCE over answer representations, LM loss on answer tokens
    pairs        contrastive examples (question, truthful answer, hallucinated answers) and batches
    loop         a deterministic, resumable AdamW training loop (:func:`train`)

Used for contrastive hallucination mitigation on EAVSS-selected layers and for LM "healing" of
pruned models; see docs/method.md, "Targeted training".
"""
