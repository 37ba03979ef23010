"""Tariff import from CSV: one plan replaced in one transaction, or nothing.

File format (UTF-8, comma-separated, a header line naming the columns):

    prefix,name,price,connectfee,mininterval,interval,currency
    36,Hungary,0.02,0,0,1,EUR
    3630,Hungary mobile,0.0456,0.01,30,6,EUR

`prefix` and `price` (per minute) are required; the rest default to an empty
name, no connect fee, no minimum, 1-second increments, the
`defaultcurrency` option and no SMS price (`smsprice`: per message part).  Prefixes are digits (a leading + or 00 and
spaces are dropped) and unique within the file; amounts are exact decimals
with at most six places.  Any invalid row rejects the whole file with its
line number; nothing is changed.
"""

from __future__ import annotations

import csv
import io
import re


from ..store.database import Database
from ..store.tariffs import replace_plan as store_replace_plan
from ..store.money import InvalidAmount, parse_amount
from .rating import Tariff, normalise
from ..text import ascii_int

COLUMNS = ("prefix", "name", "price", "connectfee", "mininterval", "interval", "currency", "smsprice")
MAX_ROWS = 2_000_000


class TariffError(Exception):
    """The file is not a valid tariff list; says which line and why."""


def parse_csv(text: str, plan: int, default_currency: str) -> list[Tariff]:
    """Parse and validate a whole tariff file."""
    reader = csv.reader(io.StringIO(text))
    try:
        header = [h.strip().lower() for h in next(reader)]
    except StopIteration:
        raise TariffError("line 1: empty file, expected a header line") from None
    unknown = [h for h in header if h not in COLUMNS]
    if unknown:
        raise TariffError(f"line 1: unknown column {unknown[0]!r} (columns: {', '.join(COLUMNS)})")
    for needed in ("prefix", "price"):
        if needed not in header:
            raise TariffError(f"line 1: the header needs a {needed} column")
    tariffs: list[Tariff] = []
    seen: dict[str, int] = {}
    for row in reader:
        line = reader.line_num
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise TariffError(f"line {line}: {len(row)} fields, the header has {len(header)}")
        if len(tariffs) >= MAX_ROWS:
            raise TariffError(f"line {line}: more than {MAX_ROWS} tariffs")
        cells = dict(zip(header, (c.strip() for c in row)))
        try:
            tariff = _tariff(cells, plan, default_currency)
        except (ValueError, InvalidAmount) as problem:
            raise TariffError(f"line {line}: {problem}") from None
        if tariff.prefix in seen:
            raise TariffError(f"line {line}: prefix {tariff.prefix} repeats line {seen[tariff.prefix]}")
        seen[tariff.prefix] = line
        tariffs.append(tariff)
    return tariffs


def _count(cells: dict[str, str], name: str, default: int, low: int) -> int:
    text = cells.get(name) or str(default)
    value = ascii_int(text, low, 86400)
    if value is None:
        raise ValueError(f"{name} must be a whole number of seconds from {low} to 86400, not {text!r}")
    return value


def _tariff(cells: dict[str, str], plan: int, default_currency: str) -> Tariff:
    prefix = normalise(cells["prefix"])
    if prefix is None:
        raise ValueError(f"prefix must be digits, not {cells['prefix']!r}")
    currency = (cells.get("currency") or default_currency).upper()
    if not re.fullmatch(r"[A-Z]{3}", currency):
        raise ValueError(f"currency must be a three-letter code, not {currency!r}")
    name = cells.get("name", "")
    if len(name) > 200:
        raise ValueError("name longer than 200 characters")
    return Tariff(
        tariffid=plan,
        prefix=prefix,
        name=name,
        price=parse_amount(cells["price"], allow_zero=True),
        connectfee=parse_amount(cells.get("connectfee") or "0", allow_zero=True),
        mininterval=_count(cells, "mininterval", 0, 0),
        interval=_count(cells, "interval", 1, 1),
        currency=currency,
        smsprice=parse_amount(cells.get("smsprice") or "0", allow_zero=True),
    )


async def replace_plan(db: Database, plan: int, tariffs: list[Tariff]) -> int:
    """Replace every tariff of C{plan} with C{tariffs}, in one transaction."""
    return await store_replace_plan(db, plan, [
        (t.prefix, t.name, t.price, t.connectfee, t.mininterval, t.interval, t.currency, t.smsprice)
        for t in tariffs])



