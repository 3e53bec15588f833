"""The runnable commands: one recipe per command, all registered here.

A recipe is a config class (the root dataclass of :mod:`eavss.config` declarations) and a
function ``run(cfg) -> report`` in a module of this package. The CLI (:mod:`eavss.cli`) builds
every sub-command, its flags and its ``--help`` from :data:`RECIPES`; ``eavss config <command>``
prints any command's resolved config. Adding a command = one config dataclass + one recipe
module + one :func:`register_recipe` line below (+ library code under ``eavss/``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from eavss.registry import Registry, lookup


@dataclass(frozen=True)
class Recipe:
    """One command.

    Attributes:
        name: the sub-command (``eavss NAME``).
        config: ``"module:Class"`` of the root config dataclass.
        run: ``"module:function"``, ``run(cfg) -> report dict``.
        help: one line for ``eavss --help``.
        description: the paragraph of ``eavss NAME --help``.
        torchrun: whether ``torchrun --nproc_per_node=N -m eavss.cli NAME`` is supported (data
            parallel statistics; rank 0 writes).
        summary: ``"module:function"``, ``summary(report, cfg) -> list[str]`` printed after a run.
        epilog: extra help text (examples).
    """

    name: str
    config: str
    run: str
    help: str
    description: str
    summary: str
    torchrun: bool = False
    epilog: str = ""

    def config_class(self) -> type:
        """The root config class."""
        return lookup(self.config)

    def runner(self) -> Callable[[Any], dict]:
        """The run function (imported on first use)."""
        return lookup(self.run)

    def summarise(self, report: dict, cfg: Any) -> list[str]:
        """Lines to print after a run."""
        return lookup(self.summary)(report, cfg)


RECIPES: Registry[Recipe] = Registry("command")
"""Every ``eavss`` command."""


def register_recipe(recipe: Recipe) -> None:
    """Register a command (help = its one-line help, torchrun = whether it supports torchrun)."""
    RECIPES.register(recipe.name, recipe, help=recipe.help, torchrun=recipe.torchrun)


_AVSS = "eavss.recipes.avss"
register_recipe(Recipe(
    "run", f"{_AVSS}:RunConfig", f"{_AVSS}:run", summary=f"{_AVSS}:summary", torchrun=True,
    help="score -> prune -> evaluate original and pruned -> report (the main job)",
    description="The main job: per-layer statistics and AVSS, remove the least important layers, evaluate the "
                "original and the pruned model, write report.json/report.md/avss.png and the pruned HF model "
                "(pruned/) into --out. Several devices: see `eavss score --help`."))
register_recipe(Recipe(
    "score", f"{_AVSS}:ScoreConfig", f"{_AVSS}:score", summary=f"{_AVSS}:summary", torchrun=True,
    help="per-layer activation statistics and AVSS",
    description="Run the calibration set through the model with hooks on every decoder layer and write per-layer "
                "variance, sparsity and AVSS (report.json, report.md, avss.png). Several devices: `torchrun "
                "--nproc_per_node=N -m eavss.cli score --device cuda ...` (or --device cpu: gloo) gives each process "
                "a shard of the calibration batches, all-reduces the sums (results equal one process's) and rank 0 "
                "writes; the same for `run`, whose pruning and evaluation then run on rank 0."))
register_recipe(Recipe(
    "prune", f"{_AVSS}:PruneConfig", f"{_AVSS}:prune", summary=f"{_AVSS}:prune_summary",
    help="remove the least important layers; writes a HF model folder",
    description="Read the scores of an `eavss score`/`eavss run` folder, remove layers from the model that was "
                "scored there (--model is not taken: the model is the one recorded in the scores) and save a model "
                "that AutoModelForCausalLM.from_pretrained loads with no custom code."))
register_recipe(Recipe(
    "eval", f"{_AVSS}:EvalConfig", f"{_AVSS}:evaluate", summary=f"{_AVSS}:summary",
    help="evaluate a model on the retention tasks",
    description="Evaluate a model (e.g. a pruned folder) on ppl (token-level WikiText-2 perplexity), wikitext2 "
                "(lm-eval word perplexity), squad (EM/F1), sst2 (accuracy)."))
_HAL = "eavss.recipes.hallucination"
register_recipe(Recipe(
    "hallucination", f"{_HAL}:HallucinationConfig", f"{_HAL}:run", summary=f"{_HAL}:summary",
    help="find the layers where hallucination lives (HSAV, HSS, EAVSS + probe check)",
    description="Label answers as hallucinated or truthful (teacher-forced TruthfulQA/HaluEval pairs; the model's "
                "own greedy answers to NQ-open, TriviaQA, SciQ, judged against gold answers), collect per-layer "
                "activation variance and sparsity of the answer tokens per class, score each layer (HSAV, HSS, "
                "EAVSS), check the ranking against per-layer linear-probe AUROC, and write report.json, report.md, "
                "eavss.png, separability.png, splits.json and samples.jsonl into --out.",
    epilog="Definitions: docs/hallucination.md. Example: eavss hallucination --sources truthfulqa,nq_open --limit 50 "
           "--out runs/h scores.combine=product"))
_CMP = "eavss.recipes.compare"
register_recipe(Recipe(
    "compare", f"{_CMP}:CompareConfig", f"{_CMP}:run", summary=f"{_CMP}:summary",
    help="AVSS against the field's depth-pruning metrics, side by side (and healed with --heal)",
    description="Every metric of compare.metrics (AVSS on three sites, block influence, angular distance, layer-skip "
                "loss, SLEB, random, last) chooses k = floor(fraction * L) layers; each set is removed from a fresh copy "
                "of the model and evaluated on the same tasks and items; the report holds each set's ground-truth cost "
                "(single-layer skip loss), its joint loss, retention per task and the metrics' rank agreement "
                "(report.json, report.md, compare.png). --heal also heals every pruned model and the unpruned control "
                "with the same budget and evaluates again.",
    epilog="Definitions: docs/method.md, 'Comparing pruning metrics and healing'. Example (CPU smoke): eavss compare "
           "--metrics avss,block_influence,layer_ppl,last --num-samples 8 --tasks ppl --limit 2 "
           "eval.ppl_context_length=256 --out runs/cmp"))
_HEAL = "eavss.recipes.heal"
register_recipe(Recipe(
    "heal", f"{_HEAL}:HealConfig", f"{_HEAL}:run", summary=f"{_HEAL}:summary",
    help="short LM fine-tune of a pruned model (LoRA on every layer, merged); writes a HF folder",
    description="Heal a (pruned) model folder: fine-tune it on WikiText-2 validation text (never test; or a file of "
                "your own outside the data folder) for heal.steps steps with LoRA on every layer (or full "
                "fine-tuning of chosen layers), merge the adapters and save a folder that "
                "AutoModelForCausalLM.from_pretrained loads with no custom code, with eavss_healing.json/.md.",
    epilog="Example: eavss heal --model runs/x/pruned --out runs/x/healed --heal-steps 100"))
_MIT = "eavss.recipes.mitigate"
register_recipe(Recipe(
    "mitigate", f"{_MIT}:MitigateConfig", f"{_MIT}:run", summary=f"{_MIT}:summary",
    help="train the hallucination-prone layers (InfoNCE) and measure the change on the hallucination suite",
    description="Read an `eavss hallucination` folder (--from), train only its top-k EAVSS layers (or mitigate.layers; "
                "full or LoRA) of the same model with InfoNCE on those layers' answer representations (truthful answer vs. "
                "hallucinated answers of the same question) plus an LM loss, on the train part of its split only, and "
                "evaluate before and after on the eval part: NQ-open, TriviaQA, SciQ, TruthfulQA, WikiQA, plus WikiText-2 "
                "perplexity and SST-2, with bootstrap and paired bootstrap intervals. --controls adds random, lowest-EAVSS, "
                "best-probe and all-layer variants with the same budget; --lodo leaves each dataset out of training. "
                "Writes report.json, report.md, model/ (merged), adapter/ (LoRA) into --out; an interrupted run resumes.",
    epilog="Definitions: docs/method.md (Targeted training). Example: eavss mitigate --from runs/h --out runs/m --controls "
           "--limit 100 --eval-limit 200 train.epochs=2"))
