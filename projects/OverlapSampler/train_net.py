"""Overlap Sampler training script: detectron2's train_net skeleton (d2kit.engine.train_net) with
the Overlap Sampler config keys."""

import overlap_sampler
from d2kit.engine import train_net


def main(args):
    return train_net.main(args, config_fns=[overlap_sampler.add_overlap_sampler_config])


if __name__ == "__main__":
    train_net.invoke_main(main)  # pragma: no cover
