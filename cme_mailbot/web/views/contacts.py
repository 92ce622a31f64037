"""The approved-sender list: search, add, change an address's schools, remove, import a CSV.

Every change goes through `cme_mailbot.contacts` (or, for dropping one school, writes its own
audit row the same way), with the signed-in username as the actor.
"""

from __future__ import annotations

from typing import Any

from sqlmodel import Session, col, or_, select
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.routing import Route

from cme_mailbot import contacts as contacts_mod
from cme_mailbot.models import ApprovedContact, AuditEvent, ContactSchool, School
from cme_mailbot.web.page import Ctx, page
from cme_mailbot.web.pagination import paginate

Errors = list[dict[str, str]]


def _schools(s: Session, contact_id: int | None) -> list[School]:
    return list(
        s.exec(
            select(School)
            .join(ContactSchool, col(ContactSchool.school_urn) == col(School.urn))
            .where(ContactSchool.contact_id == contact_id)
            .order_by(col(School.urn))
        ).all()
    )


def _contact(s: Session, contact_id: int) -> ApprovedContact:
    contact = s.get(ApprovedContact, contact_id)
    if contact is None:
        raise HTTPException(404)
    return contact


@page("contacts.view")
def contacts_list(ctx: Ctx) -> Response:
    q = ctx.query("q").lower()
    query = select(ApprovedContact).order_by(col(ApprovedContact.email))
    if q:
        like = f"%{q}%"
        matching_schools = (
            select(ContactSchool.contact_id)
            .join(School, col(School.urn) == col(ContactSchool.school_urn))
            .where(or_(col(School.urn).like(like), col(School.name).ilike(like)))
        )
        query = query.where(
            or_(
                col(ApprovedContact.email).like(like), col(ApprovedContact.id).in_(matching_schools)
            )
        )
    with ctx.db() as s:
        rows, pager = paginate(s, query, ctx.query("page"), ctx.web.page_size)
        items = [{"contact": c, "schools": _schools(s, c.id)} for c in rows]
    return ctx.render(
        "contacts/list.html",
        title="Approved contacts",
        items=items,
        q=ctx.query("q"),
        pager=pager,
        links=pager.links(ctx.url("contacts"), {"q": ctx.query("q")}),
    )


def _school_fields(ctx: Ctx, errors: Errors, required: bool) -> tuple[str, str | None] | None:
    urn, name = ctx.field("school_urn").strip(), ctx.field("school_name").strip() or None
    if not urn:
        if required:
            errors.append({"text": "Enter the school's URN", "href": "#school_urn"})
        return None
    try:
        return contacts_mod.normalise_urn(urn), name
    except contacts_mod.ContactError:
        errors.append({"text": "A school URN is 6 digits, like 109876", "href": "#school_urn"})
        return None


@page("contacts.edit")
def contacts_new(ctx: Ctx) -> Response:
    return ctx.render("contacts/new.html", title="Add an approved contact", values={})


@page("contacts.edit")
def contacts_new_post(ctx: Ctx) -> Response:
    errors: Errors = []
    email = ctx.field("email").strip()
    try:
        email = contacts_mod.normalise_email(email)
    except contacts_mod.ContactError:
        errors.append(
            {"text": "Enter an email address, like office@school.sch.uk", "href": "#email"}
        )
    school = _school_fields(ctx, errors, required=True)
    if errors or school is None:
        values = {k: ctx.field(k) for k in ("email", "school_urn", "school_name")}
        return ctx.render(
            "contacts/new.html", 400, title="Add an approved contact", values=values, errors=errors
        )
    with ctx.db() as s:
        added = contacts_mod.add_contact(s, email, school[0], school[1], actor=ctx.actor)
    note = "added" if added else "was already approved"
    return ctx.redirect(
        "contacts", flash=f"{email} {note} for URN {school[0]}.", query={"q": email}
    )


@page("contacts.edit")
def contacts_edit(ctx: Ctx) -> Response:
    with ctx.db() as s:
        contact = _contact(s, ctx.path("contact_id"))
        schools = _schools(s, contact.id)
    return ctx.render(
        "contacts/edit.html",
        title=f"Change schools for {contact.email}",
        contact=contact,
        schools=schools,
        values={},
    )


def _drop_school(s: Session, contact: ApprovedContact, urn: str, actor: str) -> None:
    link = s.get(ContactSchool, (contact.id, urn))
    if link is not None:
        s.delete(link)
        s.add(
            AuditEvent(
                actor=actor,
                action="contact.remove_school",
                target=contact.email,
                detail=f"URN {urn}",
            )
        )


@page("contacts.edit")
def contacts_edit_post(ctx: Ctx) -> Response:
    errors: Errors = []
    with ctx.db() as s:
        contact = _contact(s, ctx.path("contact_id"))
        schools = _schools(s, contact.id)
        keep = set(ctx.fields("keep"))
        new = _school_fields(ctx, errors, required=False)
        remaining = {x.urn for x in schools if x.urn in keep} | ({new[0]} if new else set())
        if not errors and not remaining:
            errors.append(
                {
                    "text": "An approved contact needs at least one school. "
                    "To stop approving this address, remove it instead.",
                    "href": f"#keep-{schools[0].urn}" if schools else "#school_urn",
                }
            )
        if errors:
            values: dict[str, Any] = {
                "school_urn": ctx.field("school_urn"),
                "school_name": ctx.field("school_name"),
                "keep": keep,
            }
            return ctx.render(
                "contacts/edit.html",
                400,
                title=f"Change schools for {contact.email}",
                contact=contact,
                schools=schools,
                values=values,
                errors=errors,
            )
        if new:
            contacts_mod.add_contact(s, contact.email, new[0], new[1], actor=ctx.actor)
        for school in schools:
            if school.urn not in keep:
                _drop_school(s, contact, school.urn, ctx.actor)
        email = contact.email
    return ctx.redirect("contacts", flash=f"Schools for {email} saved.", query={"q": email})


@page("contacts.edit")
def contacts_remove(ctx: Ctx) -> Response:
    with ctx.db() as s:
        contact = _contact(s, ctx.path("contact_id"))
        schools = _schools(s, contact.id)
    return ctx.render(
        "contacts/remove.html", title=f"Remove {contact.email}", contact=contact, schools=schools
    )


@page("contacts.edit")
def contacts_remove_post(ctx: Ctx) -> Response:
    with ctx.db() as s:
        contact = _contact(s, ctx.path("contact_id"))
        email = contact.email
        contacts_mod.remove_contact(s, email, actor=ctx.actor)
    return ctx.redirect("contacts", flash=f"{email} is no longer an approved contact.")


@page("contacts.edit")
def contacts_import(ctx: Ctx) -> Response:
    return ctx.render("contacts/import.html", title="Import approved contacts")


@page("contacts.edit")
def contacts_import_post(ctx: Ctx) -> Response:
    def fail(text: str) -> Response:
        return ctx.render(
            "contacts/import.html",
            400,
            title="Import approved contacts",
            errors=[{"text": text, "href": "#csv"}],
        )

    upload = ctx.upload("csv")
    if upload is None or not upload.filename:
        return fail("Choose a CSV file to import")
    data = upload.file.read(ctx.web.max_upload_bytes + 1)
    if len(data) > ctx.web.max_upload_bytes:
        return fail(f"The file is larger than {ctx.web.max_upload_bytes // 1024} KB")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return fail("The file is not UTF-8 text: save it from your spreadsheet as CSV UTF-8")
    try:
        with ctx.db() as s:
            added, unchanged = contacts_mod.import_csv(s, text, actor=ctx.actor)
    except contacts_mod.ContactError as exc:
        return fail(f"Nothing was imported: {exc}")
    return ctx.redirect("contacts", flash=f"Imported: {added} added, {unchanged} already approved.")


ROUTES = [
    Route("/contacts", contacts_list, methods=["GET"], name="contacts"),
    Route("/contacts/new", contacts_new, methods=["GET"], name="contacts_new"),
    Route("/contacts/new", contacts_new_post, methods=["POST"], name="contacts_new_post"),
    Route("/contacts/import", contacts_import, methods=["GET"], name="contacts_import"),
    Route("/contacts/import", contacts_import_post, methods=["POST"], name="contacts_import_post"),
    Route("/contacts/{contact_id:int}/edit", contacts_edit, methods=["GET"], name="contacts_edit"),
    Route(
        "/contacts/{contact_id:int}/edit",
        contacts_edit_post,
        methods=["POST"],
        name="contacts_edit_post",
    ),
    Route(
        "/contacts/{contact_id:int}/remove",
        contacts_remove,
        methods=["GET"],
        name="contacts_remove",
    ),
    Route(
        "/contacts/{contact_id:int}/remove",
        contacts_remove_post,
        methods=["POST"],
        name="contacts_remove_post",
    ),
]
