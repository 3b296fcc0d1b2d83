"""The shared train_net with every project's keys (what ``python -m d2kit.engine.train_net``
runs), in this process."""

import pytest
from detectron2.engine import default_argument_parser

from d2kit.engine import train_net
from d2kit.projects import project_config_fns


@pytest.fixture
def run_composed_train_net(tmp_path):
    """Run ``d2kit.engine.train_net.main`` with every project's keys, in this process."""

    def run(config_file, *opts, eval_only=False, output_dir=None):
        output_dir = str(output_dir or tmp_path / "output")
        argv = ["--config-file", str(config_file)] + (["--eval-only"] if eval_only else [])
        argv += ["OUTPUT_DIR", output_dir, *[str(o) for o in opts]]
        args = default_argument_parser().parse_args(argv)
        return train_net.main(args, config_fns=project_config_fns())

    return run
