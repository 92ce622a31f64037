"""Long lists in pages of `web.page_size` rows, with links that keep the list's filters."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func
from sqlmodel import Session, select
from sqlmodel.sql.expression import SelectOfScalar


@dataclass(frozen=True)
class Pager:
    page: int
    size: int
    total: int

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.size))

    @property
    def offset(self) -> int:
        return (self.page - 1) * self.size

    @property
    def first(self) -> int:
        return 0 if self.total == 0 else self.offset + 1

    @property
    def last(self) -> int:
        return min(self.total, self.offset + self.size)

    def links(self, base: str, query: Mapping[str, str]) -> dict[str, str | None]:
        from urllib.parse import urlencode

        def href(n: int) -> str:
            q = {k: v for k, v in query.items() if v and k != "page"}
            if n > 1:
                q["page"] = str(n)
            return f"{base}?{urlencode(q)}" if q else base

        return {
            "previous": href(self.page - 1) if self.page > 1 else None,
            "next": href(self.page + 1) if self.page < self.pages else None,
        }


def page_number(raw: str) -> int:
    return int(raw) if raw.isdigit() and 0 < int(raw) < 1_000_000 else 1


def paginate(
    s: Session, query: SelectOfScalar[Any], raw_page: str, size: int
) -> tuple[list[Any], Pager]:
    """Rows of one page of `query` and the pager; a page past the end shows the last one."""
    total = int(s.exec(select(func.count()).select_from(query.order_by(None).subquery())).one())
    pager = Pager(page_number(raw_page), size, total)
    if pager.page > pager.pages:
        pager = Pager(pager.pages, size, total)
    rows = list(s.exec(query.offset(pager.offset).limit(size)).all())
    return rows, pager
