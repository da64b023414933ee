"""Refuses any flag that Beam's ``PipelineOptions`` does not know.

The job splits its own flags off with ``parse_known_args`` and hands the rest
to Beam, which drops a flag it does not know with a log warning: together they
turned a misspelt flag of ours (``--valid-fracton 0.5``) into a silent
default. The flags Beam knows are those every ``PipelineOptions`` subclass
registers, collected the way ``PipelineOptions.get_all_options`` collects them,
so what passes here is exactly what Beam will read.
"""

import difflib

from apache_beam.options import pipeline_options


class _Parser(pipeline_options._BeamArgumentParser):
    """Beam's own parser class (options call its ``add_value_provider_argument``), erroring in one line."""

    def error(self, message):
        raise ValueError(message)


def _beam_parser():
    parser = _Parser(allow_abbrev=False, add_help=False)
    # One registration per class name, as in get_all_options (a class may be seen twice).
    classes = {str(cls): cls for cls in pipeline_options.PipelineOptions.__subclasses__()}
    for cls in classes.values():
        cls._add_argparse_args(parser)
    return parser


def check(beam_args, own_flags=()):
    """Checks that ``beam_args`` are Beam pipeline options with valid values.

    ``--flag value`` and ``--flag=value`` are both accepted, as Beam accepts them.

    Args:
        beam_args: What the job's own parser left over.
        own_flags: The job's own flag names, offered as corrections of a typo.

    Raises:
        ValueError: Naming the first unknown flag (with the closest known one)
            or the Beam option whose value is invalid.
    """
    parser = _beam_parser()
    _, unknown = parser.parse_known_args(list(beam_args))
    if not unknown:
        return
    flags = [arg.split("=", 1)[0] for arg in unknown if arg.startswith("-")]
    if not flags:
        raise ValueError(f"unexpected argument {unknown[0]!r}: every argument must follow a --flag")
    known = [*own_flags, *(flag for action in parser._actions for flag in action.option_strings)]
    close = difflib.get_close_matches(flags[0], known, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    more = f" (and {len(flags) - 1} more)" if len(flags) > 1 else ""
    raise ValueError(
        f"unrecognized flag {flags[0]}{hint}{more}: neither a flag of this job nor a Beam pipeline option"
    )
