"""`lmforge label serve`: a small local web app for labelling one item at a time.

Server-rendered HTML (Jinja2) with one small script for the keyboard: number keys pick a label
(or, for NER, tag the selected text), Enter accepts the suggestion (or saves the spans), u or
Ctrl+Z undoes, s skips, c goes to the comment box. A pairwise session (`pairwise.PairSession`)
shows a prompt and two answers side by side instead: a / b pick the left / right one, t is a
tie, x both bad. Every answer is in the append-only log on disk
(`store.AnswerStore`, fsynced) before the request returns, so killing the server loses nothing,
and undo works across restarts. Binds 127.0.0.1 unless told otherwise; with an access key
(required off loopback) every request must carry it: `?key=` once in the URL (it is then kept in
an HttpOnly cookie) or `Authorization: Bearer <key>`. `guard.Guard` also refuses other Host names
(DNS rebinding), state changes sent from other origins, and oversize bodies, key or no key.

Routes: `GET /` (redirect to the next item), `GET /item/{id}`, `POST /api/answer`,
`POST /api/undo`, `POST /api/skip`, `GET /api/state`, `GET /healthz`, `/static/*`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from lmforge.errors import UserError
from lmforge.label.guard import Guard, LabelServerConfig, is_loopback
from lmforge.label.pairwise import Pair, PairSession
from lmforge.label.session import Item, Session

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
# Colours for up to 9 entity types: distinguishable, and dark text stays readable on each.
COLOURS = ["#ffd166", "#8ecae6", "#b5e48c", "#f4a3c0", "#cdb4db", "#ffb703", "#90e0ef", "#e9c46a", "#a3c4bc"]


def segments(text: str, spans: list[list[Any]] | None) -> list[dict[str, Any]]:
    """The text cut at span edges: [{"text", "start", "label" or None}], for rendering highlights."""
    out, pos = [], 0
    for start, end, label in sorted(spans or []):
        if start < pos:
            continue  # overlapping spans are refused on save; never render one twice
        if start > pos:
            out.append({"text": text[pos:start], "start": pos, "label": None})
        out.append({"text": text[start:end], "start": start, "label": label})
        pos = end
    if pos < len(text) or not out:
        out.append({"text": text[pos:], "start": pos, "label": None})
    return out


def _url(item: Item | Pair | None) -> str:
    return "/done" if item is None else f"/item/{quote(item.id, safe='')}"


def _pair_page(env: Any, session: PairSession, pair: Pair) -> str:
    """The pair page: the prompt, the answers on the sides the pair's coin chose, the decision if there is one."""
    answer = session.store.current().get(pair.id)
    shown = pair.shown(answer["label"]) if answer else None
    turns = [{"role": "", "content": pair.prompt}] if isinstance(pair.prompt, str) else pair.prompt
    config = {"item": pair.id, "kind": "pairwise", "labels": [], "choice": shown,
              "answer": {"comment": answer.get("comment")} if answer else None}
    return env.get_template("pair.html").render(pair=pair, turns=turns, state=session.state(), answer=answer,
                                                shown=shown, config=config, max_comment=session.max_comment_chars)


def create_app(session: Session | PairSession, access_key: str | None = None,
               config: LabelServerConfig | None = None):
    """The FastAPI app over one labelling session, behind `guard.Guard` (Host, origin, body size, access key).

    `config` says where it is served (default 127.0.0.1:8765), which decides the Host names it answers to.
    """
    from fastapi import Body, FastAPI, HTTPException
    from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
    from fastapi.staticfiles import StaticFiles
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    env = Environment(loader=FileSystemLoader(str(HERE / "templates")), autoescape=select_autoescape(["html"]))
    app = FastAPI(title="lmforge label", docs_url=None, redoc_url=None, openapi_url=None)
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    app.add_middleware(Guard, config=config or LabelServerConfig(), access_key=access_key)
    colours = {label: COLOURS[i % len(COLOURS)] for i, label in enumerate(session.labels)}

    def fail(exc: UserError) -> HTTPException:
        return HTTPException(status_code=400, detail=str(exc))

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {"ok": True, "items": len(session.items), "answered": len(session.store.current())}

    @app.get("/")
    def index() -> RedirectResponse:
        return RedirectResponse(_url(session.next_item()), status_code=303)

    @app.get("/done", response_class=HTMLResponse)
    def done() -> str:
        return env.get_template("done.html").render(state=session.state())

    @app.get("/item/{item_id:path}", response_class=HTMLResponse)
    def show(item_id: str) -> str:
        try:
            item = session.item(item_id)
        except UserError as exc:
            raise HTTPException(status_code=404, detail=str(exc)) from None
        if isinstance(session, PairSession):
            return _pair_page(env, session, item)
        answer = session.store.current().get(item.id)
        suggestion = session.suggestion(item)
        spans = None
        if session.kind == "ner":
            spans = answer["spans"] if answer else (suggestion or {}).get("spans") or []
        config = {"item": item.id, "kind": session.kind, "labels": session.labels, "text": item.text,
                  "spans": spans, "colours": colours, "suggestion": suggestion,
                  "answer": {k: answer.get(k) for k in ("label", "spans", "comment")} if answer else None}
        return env.get_template("item.html").render(
            item=item, state=session.state(), suggestion=suggestion, answer=answer, colours=colours,
            segments=segments(item.text, spans) if session.kind == "ner" else None, config=config,
            max_comment=session.max_comment_chars)

    @app.post("/api/answer")
    def answer(payload: dict[str, Any] = Body(...)) -> JSONResponse:
        try:
            if isinstance(session, PairSession):
                event = session.answer(str(payload.get("item")), choice=payload.get("choice"),
                                       comment=str(payload.get("comment") or ""))
            else:
                event = session.answer(str(payload.get("item")), label=payload.get("label"),
                                       spans=payload.get("spans"), comment=str(payload.get("comment") or ""))
        except UserError as exc:
            raise fail(exc) from None
        nxt = session.next_item(exclude=[event["item"]])
        return JSONResponse({"saved": True, "seq": event["seq"], "item": event["item"], "next": _url(nxt),
                             "answered": len(session.store.current())})

    @app.post("/api/undo")
    def undo() -> JSONResponse:
        event = session.undo()
        if event is None:
            return JSONResponse({"undone": None, "next": _url(session.next_item())})
        return JSONResponse({"undone": event["item"], "seq": event["seq"],
                             "next": _url(session.item(event["item"]))})

    @app.post("/api/skip")
    def skip(payload: dict[str, Any] = Body(...)) -> JSONResponse:
        try:
            session.skip(str(payload.get("item")))
        except UserError as exc:
            raise fail(exc) from None
        return JSONResponse({"next": _url(session.next_item(exclude=[str(payload.get("item"))]))})

    @app.get("/api/state")
    def state() -> dict[str, Any]:
        return session.state()

    return app


def serve(session: Session, host: str = "127.0.0.1", port: int = 8765, access_key: str | None = None, *,
          allowed_hosts: Sequence[str] = (), max_body_bytes: int | None = None) -> None:
    """Run the app with uvicorn until interrupted; off loopback an access key is required."""
    from lmforge.config import validate
    from lmforge.errors import ConfigError, require

    given = {"host": host, "port": port, "allowed_hosts": list(allowed_hosts), "max_body_bytes": max_body_bytes}
    config = validate(LabelServerConfig, {k: v for k, v in given.items() if v is not None}, where="label serve")
    if not is_loopback(host) and not access_key:
        raise ConfigError(f"host {host!r} is not loopback: give an access key (--key) to serve labelling beyond "
                          "this machine")
    uvicorn = require("uvicorn", "label")
    uvicorn.run(create_app(session, access_key, config), host=host, port=port, log_level="warning",
                access_log=False)
