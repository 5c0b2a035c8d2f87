"""The `hfsae` subcommands: one module per command group, each holding its `*Args` dataclass and `run_*`.

The library (`hfsae.*` outside this package and `hfsae.cli`) never imports from here: a command
parses options, calls the library and reports; the library knows nothing of the command line.
"""
