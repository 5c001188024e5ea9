"""transformers' loss on the held-out tokens trainer-hf-loss.ts chose, from the trainer's export.

    python3 scripts/gpu/trainer-hf-loss.py HF_DIR OURS_JSON

Loads HF_DIR as LlamaForCausalLM in float32 (on the GPU when there is one, eager attention), computes
the mean next-token cross-entropy of the tokens (labels = input_ids: transformers shifts them) and
prints both losses and their difference; exits 1 when they differ by more than 1e-3 (f32 arithmetic
in two implementations: ~1e-5 expected).
"""

import json
import sys

import torch
from transformers import LlamaForCausalLM

hf_dir, ours_path = sys.argv[1], sys.argv[2]
ours = json.load(open(ours_path))
dev = "cuda" if torch.cuda.is_available() else "cpu"
model = LlamaForCausalLM.from_pretrained(hf_dir, dtype=torch.float32, attn_implementation="eager").to(dev)
model.eval()
ids = torch.tensor([ours["tokens"]], device=dev)
with torch.no_grad():
    theirs = model(input_ids=ids, labels=ids).loss.item()
diff = abs(theirs - ours["loss"])
print(f"transformers loss {theirs:.6f}  ours {ours['loss']:.6f}  |diff| {diff:.2e}  (sequence {ours['sequence']}, {len(ours['tokens'])} tokens)")
sys.exit(0 if diff < 1e-3 else 1)
