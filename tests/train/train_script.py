"""Run lmforge pretraining in its own process (for the kill/resume and torchrun tests).

usage: python train_script.py TOKENS_FILE OUT_DIR CONFIG_JSON
Env LMFORGE_TEST_STEP_SLEEP slows every step down so a test can kill the run mid-way.
"""

import json
import os
import sys
import time

from lmforge.tokenize.encode import read_token_file
from lmforge.train.pretrain import PretrainConfig, pretrain


def main() -> None:
    tokens_file, out, config = sys.argv[1:4]
    tokens = read_token_file(tokens_file)
    n_val = len(tokens) // 10
    delay = float(os.environ.get("LMFORGE_TEST_STEP_SLEEP", 0))
    cfg = PretrainConfig(**json.loads(config))
    result = pretrain(cfg, tokens[n_val:], tokens[:n_val], int(tokens.max()) + 1, out,
                      on_step=lambda step, loss: time.sleep(delay))
    if int(os.environ.get("RANK", 0)) == 0:
        print(json.dumps({"steps": result.steps, "resumed_from": result.train.resumed_from}))


if __name__ == "__main__":
    main()
