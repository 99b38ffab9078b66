"""Login, logout and the staff member's own account (language, password, API tokens)."""

from __future__ import annotations

from flask import Blueprint, abort, flash, g, redirect, render_template, request, session, url_for
from flask.typing import ResponseReturnValue
from flask_babel import gettext

from web import accounts
from web.context import commit, current_staff, db, now, origin, record, refused, requires, services
from web.errors import InvalidCredentials, LoginThrottled, WeakPassword
from web.i18n import LANGUAGES

auth = Blueprint("auth", __name__)

ALL_ROLES = ("doctor", "nurse", "admin")


def _safe_next(target: str | None) -> str | None:
    # Only a path on this site: never an open redirect to another host.
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return None


@auth.route("/login", methods=["GET", "POST"])
def login() -> ResponseReturnValue:
    """The login form; a successful login starts a new server-side session."""
    language = request.args.get("lang")
    if language in LANGUAGES:
        session["lang"] = language
    if g.get("staff") is not None and request.method == "GET":
        return redirect(url_for("home"))
    error = None
    if request.method == "POST":
        username = request.form.get("username", "")
        password = request.form.get("password", "")
        try:
            staff = accounts.authenticate(
                db(), username, password, origin=origin(), now=now(), settings=services().settings.web
            )
        except LoginThrottled:
            commit()
            error = gettext(
                "Too many failed attempts. Try again in %(minutes)d minutes.",
                minutes=services().settings.web.login_window_minutes,
            )
        except InvalidCredentials:
            commit()
            error = gettext("Wrong username or password.")
        else:
            token = accounts.start_session(db(), staff, ip=origin().ip, now=now())
            commit()
            # A fresh cookie session: nothing from before the login (fixation) survives it.
            session.clear()
            session["sid"] = token
            return redirect(_safe_next(request.form.get("next")) or url_for("home"))
    logged_off = g.get("logged_off") or request.args.get("logged_off")
    return render_template(
        "login.html",
        error=error,
        next=_safe_next(request.values.get("next")) or "",
        logged_off=logged_off,
        username=request.form.get("username", ""),
    ), (401 if error else 200)


@auth.post("/logout")
def logout() -> ResponseReturnValue:
    """End the session (on the server too) and go back to the login page."""
    token = session.get("sid")
    staff = g.get("staff")
    if isinstance(token, str):
        if staff is not None:
            record("logout")
        accounts.end_session(db(), token, now=now())
        commit()
    language = session.get("lang") if staff is None else staff.language
    session.clear()
    if language in LANGUAGES:
        session["lang"] = language
    return redirect(url_for("auth.login"))


@auth.get("/account")
@requires(*ALL_ROLES)
def account() -> ResponseReturnValue:
    """The staff member's own settings: language, password, API tokens."""
    staff = current_staff()
    return render_template(
        "account.html",
        tokens=accounts.list_api_tokens(db(), staff.id),
        new_token=session.pop("new_token", None),
    )


@auth.post("/account/language")
@requires(*ALL_ROLES)
def change_language() -> ResponseReturnValue:
    """Switch the interface language (kept on the staff member, so it follows them)."""
    language = request.form.get("language", "")
    if language not in LANGUAGES:
        abort(400)
    staff = current_staff()
    if staff.language != language:
        staff.language = language
        record("change_language", detail=language)
        commit()
    return redirect(_safe_next(request.form.get("next")) or url_for("home"))


@auth.post("/account/password")
@requires(*ALL_ROLES)
def change_password() -> ResponseReturnValue:
    """Change one's own password (the current one is asked again); other sessions end."""
    staff = current_staff()
    current = request.form.get("current", "")
    new = request.form.get("new", "")
    if new != request.form.get("repeat", ""):
        return refused(gettext("The new passwords differ."), url_for("auth.account"))
    try:
        accounts.authenticate(
            db(), staff.username, current, origin=origin(), now=now(), settings=services().settings.web
        )
        accounts.set_password(db(), staff, new, now=now())
    except (InvalidCredentials, LoginThrottled):
        commit()  # the failed attempt is audited and counts towards the throttle
        return refused(gettext("The current password is wrong."), url_for("auth.account"), 403)
    except WeakPassword:
        return refused(
            gettext(
                "The new password must have at least %(n)d characters and not contain the username.",
                n=accounts.MIN_PASSWORD_LENGTH,
            ),
            url_for("auth.account"),
        )
    record("change_password")
    # Our own session ended with the others: start a new one.
    token = accounts.start_session(db(), staff, ip=origin().ip, now=now())
    commit()
    session["sid"] = token
    flash(gettext("Password changed."), "ok")
    return redirect(url_for("auth.account"))


@auth.post("/account/tokens")
@requires(*ALL_ROLES)
def create_token() -> ResponseReturnValue:
    """Create an API token; its secret is shown once."""
    staff = current_staff()
    created = accounts.create_api_token(db(), staff, request.form.get("name", ""), now=now())
    record("create_api_token", object_type="api_token", object_id=created.id, detail=created.name)
    commit()
    session["new_token"] = created.secret
    return redirect(url_for("auth.account"))


@auth.post("/account/tokens/<int:token_id>/revoke")
@requires(*ALL_ROLES)
def revoke_token(token_id: int) -> ResponseReturnValue:
    """Revoke one of one's own API tokens."""
    staff = current_staff()
    if accounts.revoke_api_token(db(), staff.id, token_id, now=now()):
        record("revoke_api_token", object_type="api_token", object_id=token_id)
        commit()
        flash(gettext("Token revoked."), "ok")
    return redirect(url_for("auth.account"))
