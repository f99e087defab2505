"""The command line's commands, one module each: ``add_arguments(parser)`` declares the command's
flags (and sets ``run``, its handler) next to the handler itself. :data:`sslkd.cli.COMMANDS` names
them with their one-line help, so that ``sslkd --help`` lists every command without importing any
(PyTorch loads only for the command that runs); a new command is a module here plus its line there."""
