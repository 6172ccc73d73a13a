#!/usr/bin/env python3
"""Entry point of the CDK app; the only module that reads context or the environment.

cdk synth -c env=prod                  # a shipped environment (config/prod.yaml)
cdk synth -c config=path/to/mine.yaml  # your file, merged over env (default dev)
"""

import sys

from aws_cdk import App

from platform_config import ConfigError, load_config
from stacks.platform import APP_OPTIONS, build_platform


def main() -> int:
    app = App(**APP_OPTIONS)
    try:
        config = load_config(
            env=app.node.try_get_context("env") or "dev",
            override_file=app.node.try_get_context("config"),
        )
    except ConfigError as error:
        print(f"config error: {error}", file=sys.stderr)
        return 2
    build_platform(app, config)
    app.synth()
    return 0


if __name__ == "__main__":
    sys.exit(main())
