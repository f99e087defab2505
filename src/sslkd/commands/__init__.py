"""The command line's commands, one module each: ``add_arguments(parser)`` declares the command's
flags (and sets ``run``, its handler) next to the handler itself. :mod:`sslkd.cli` lists them in
:data:`sslkd.cli.COMMANDS` and imports a command's module only when that command runs."""
