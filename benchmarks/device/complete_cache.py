"""On the lent GPU machine: finish a carried eavss model-cache folder whose weights were left out.

A converted GGUF (``eavss.models.loading`` cache: config, tokenizer, marker) is small except for
its float32 weights; the tokenizer conversion can also differ between transformers versions.
So the cache folder is carried without ``model.safetensors`` (``.dev/gemkit/<sha16>/``) and this
script writes the weights from the assembled GGUF with the machine's transformers, into
``$EAVSS_CACHE/<sha16>/``. Usage: python3 benchmarks/device/complete_cache.py KIT_DIR GGUF_FILE
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path


def main() -> None:
    import os

    import torch
    from transformers import AutoModelForCausalLM

    from eavss.models.surgery import strip_quantization

    kit, gguf = Path(sys.argv[1]), Path(sys.argv[2])
    dest = Path(os.environ["EAVSS_CACHE"]) / kit.name
    if (dest / "model.safetensors").is_file():
        print(f"{dest}: complete")
        return
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    strip_quantization(model)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        dest.mkdir(parents=True, exist_ok=True)
        for f in kit.iterdir():
            shutil.copy(f, dest / f.name)
        shutil.copy(Path(tmp) / "model.safetensors", dest / "model.safetensors")
    print(f"{dest}: weights written")


if __name__ == "__main__":
    main()
