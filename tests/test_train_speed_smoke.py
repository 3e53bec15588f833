"""benchmarks/train_speed.py runs end to end on a tiny model (CPU) and reports what it claims."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def test_train_speed_tiny(tmp_path):
    import train_speed

    out = tmp_path / "r.json"
    rc = train_speed.main(["--model", "tiny:llama", "--layers", "0,2", "--steps", "2", "--warmup", "1",
                           "--isolate", "no", "--prompt-len", "12", "--answer-len", "4", "--out", str(out)])
    assert rc == 0
    r = json.loads(out.read_text())
    v = r["variants"]
    assert set(v) == {"full", "lora", "lora_all"}
    assert v["full"]["layers"] == [0, 2] and v["lora_all"]["layers"] == list(range(8))
    assert v["lora"]["trainable_parameters"] < v["lora_all"]["trainable_parameters"]
    assert v["lora"]["trainable_parameters"] < v["full"]["trainable_parameters"]
    for x in v.values():
        assert x["tokens_per_second"] > 0 and x["timed_steps"] == 2 and x["tokens_per_step"] == 2 * 3 * 16
