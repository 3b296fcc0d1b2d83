"""Ref-NMS training script: detectron2's train_net skeleton (d2kit.engine.train_net) with the
Ref-NMS config keys and its trainer (the relatedness module on a frozen, cached first stage;
Table 1 recall written to OUTPUT_DIR/final_results.json)."""

import ref_nms
from d2kit.engine import train_net
from ref_nms.trainer import RefNMSTrainer


def main(args):
    return train_net.main(args, config_fns=[ref_nms.add_ref_nms_config], trainer_cls=RefNMSTrainer)


if __name__ == "__main__":
    train_net.invoke_main(main)  # pragma: no cover
