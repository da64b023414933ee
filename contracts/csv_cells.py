"""CSV cells a spreadsheet shows as text: the one rule every CSV writer of the project applies.

A class name, wnid or file name is user text, and ``=HYPERLINK(...)`` or
``@SUM(...)`` in a CSV cell is a formula to Excel, LibreOffice and Google
Sheets ("CSV injection"). The trainer's per-class CSV (``trainer.report``) and
``trainer.predict``'s rows (``trainer.predict_output``) pass every row through
:func:`row`.

Depends on nothing (a contract: no project imports).
"""

# The leading characters that make a spreadsheet read a cell as a formula (OWASP, "CSV Injection").
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def row(values):
    """Returns a CSV row's ``values`` with every text cell a spreadsheet would run as a formula escaped.

    The rule is OWASP's: text starting with ``=``, ``+``, ``-``, ``@``, tab or
    carriage return gets a leading ``'``, which spreadsheets show as text and
    do not run. Numbers are kept as they are (``-0.5`` stays a number); the
    ``csv`` module quotes separators and quotes inside a cell.
    """
    return [
        f"'{value}" if isinstance(value, str) and value.startswith(FORMULA_PREFIXES) else value
        for value in values
    ]
