"""The Tk client in real windows under Xvfb and a window manager, against the real server.

The tests drive the real widgets: ``invoke()`` on buttons, real key events
(``event_generate`` after ``focus_force``, or ``xdotool type`` where focus
is the point), list selection in the sidebar, and the window manager's close
protocol for the X button. They never sleep blindly: ``pump_until`` runs
Tk's loop until a condition holds, with a deadline. Several clients live in
one Tk, each in its own ``Toplevel``, each with its own session.
"""

from __future__ import annotations

import gc
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import pump_until
from wire import (
    TIMEOUT,
    UNLIMITED,
    ServerProcess,
    WireClient,
    free_port,
    make_certificate,
    running_server,
    wait_until,
)

import armazem
import cliente
import protocolo
import servidor
from cliente import ChatApp

tk = pytest.importorskip("tkinter")

pytestmark = pytest.mark.gui

FAST_RECONNECT = (0.2, 0.4, 0.8)


# --------------------------------------------------------------------------
# Fixtures and helpers


@pytest.fixture(scope="module", autouse=True)
def garbage_collected_in_tk_thread():
    """No automatic garbage collection while these tests run; ``apps`` collects instead.

    Every test makes and destroys its own Tk, and runs servers and sessions in
    threads of this process. If one of those threads happened to collect a
    destroyed window's garbage, Tcl would abort the process ("async handler
    deleted by the wrong thread"), and tkinter's clean-up of images and
    variables would stall that thread for a second per object. The program
    itself has one Tk for its whole life, so only the tests need this.
    """
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.collect()
        gc.enable()


@pytest.fixture
def server():
    with running_server(**UNLIMITED, discovery=False) as srv:
        yield srv


@pytest.fixture
def account_server(tmp_path):
    """A server that keeps accounts and messages (in a file of this test's own)."""
    store = armazem.Store.open(str(tmp_path / "chat.sqlite3"))
    with running_server(**UNLIMITED, discovery=False, store=store) as srv:
        yield srv


def session_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("chat-sessao")]


def fast_session() -> cliente.ChatSession:
    return cliente.ChatSession(connect_timeout=TIMEOUT, reconnect_delays=FAST_RECONNECT,
                               close_timeout=0.5)


@pytest.fixture
def apps(tk_root, window_manager):
    """``apps(**options)`` builds a ``ChatApp`` in a new ``Toplevel`` of the test's root."""
    gc.collect()  # the last test's windows, now that its Tk is gone
    tk_root.withdraw()
    made: list[ChatApp] = []

    def make(**options: object) -> ChatApp:
        top = tk.Toplevel(tk_root, class_=cliente.WM_CLASS)
        top.geometry(f"980x660+{20 + 40 * len(made)}+{20 + 30 * len(made)}")
        options.setdefault("discover", None)
        options.setdefault("session_factory", fast_session)
        options.setdefault("sound", False)
        app = ChatApp(top, **options)
        made.append(app)
        pump_until(tk_root, top.winfo_viewable, TIMEOUT)
        return app

    yield make
    for app in made:
        app.close()
    wait_until(lambda: not session_threads(), TIMEOUT, "threads de sessão encerradas")
    made.clear()
    gc.collect()


def connect(root: tk.Tk, app: ChatApp, port: int, nick: str, password: str = "") -> None:
    """Fill the form, click Conectar, wait until #geral is open."""
    app.address_var.set(f"127.0.0.1:{port}")
    app.nick_var.set(nick)
    app.password_var.set(password)
    app.connect_button.invoke()
    pump_until(root, lambda: app.connected and app.current is not None
               and app.current.name == "#geral", TIMEOUT)


def press(root: tk.Tk, widget: tk.Widget, sequence: str) -> None:
    """A key event on ``widget`` (``<Return>``, ``<Shift-Return>``, ``<Control-Tab>``...)."""
    widget.focus_force()
    root.update()
    widget.event_generate(sequence)
    root.update()


def type_and_send(root: tk.Tk, app: ChatApp, text: str) -> None:
    app.composer.set(text)
    press(root, app.composer.text, "<Return>")


def open_person(root: tk.Tk, app: ChatApp, nick: str) -> None:
    """Select ``nick`` in Pessoas and click Iniciar Chat."""
    key = protocolo.nick_key(nick)
    pump_until(root, lambda: app.sidebar.tree.exists(f"p:{key}"), TIMEOUT)
    app.sidebar.tree.selection_set(f"p:{key}")
    root.update()
    app.chat_button.invoke()
    pump_until(root, lambda: app.current is not None and app.current.key == key, TIMEOUT)


def labels(app: ChatApp) -> list[str]:
    return app.sidebar.labels()


def toplevels(root: tk.Tk) -> list[str]:
    return [str(w) for w in root.winfo_children() if isinstance(w, tk.Toplevel)]


def fully_visible(widget: tk.Widget) -> bool:
    """Mapped, and its whole rectangle inside its toplevel's."""
    if not widget.winfo_viewable():
        return False
    top = widget.winfo_toplevel()
    x, y = widget.winfo_rootx() - top.winfo_rootx(), widget.winfo_rooty() - top.winfo_rooty()
    return (x >= 0 and y >= 0 and widget.winfo_width() > 1 and widget.winfo_height() > 1
            and x + widget.winfo_width() <= top.winfo_width()
            and y + widget.winfo_height() <= top.winfo_height())


def click_text(root: tk.Tk, text: tk.Text, index: str) -> None:
    """A real click (the pointer moves there) on the character at ``index`` of ``text``."""
    top = text.winfo_toplevel()
    top.lift()  # nothing of another window over the spot
    top.focus_force()
    pump_until(root, lambda: root.focus_get() is not None
               and root.focus_get().winfo_toplevel() is top, TIMEOUT)
    text.see(index)
    root.update()
    x, y, _width, height = text.bbox(index)
    subprocess.run(["xdotool", "mousemove", "--sync", str(text.winfo_rootx() + x + 3),
                    str(text.winfo_rooty() + y + height // 2), "click", "1"],
                   timeout=TIMEOUT, check=True)
    root.update()


def xdotool(*args: str) -> str:
    return subprocess.run(["xdotool", *args], capture_output=True, text=True,
                          timeout=TIMEOUT, check=False).stdout.strip()


# --------------------------------------------------------------------------
# The whole story: two clients, a room, a conversation


def test_two_clients_in_a_room_and_a_conversation(tk_root, server, apps):
    port = server.address[1]
    ana, bruno = apps(), apps()
    assert ana.master.title() == "Chat da turma"
    assert ana.view_name == "connect"

    # Ana connects with the button, Bruno with Enter in the form; #geral opens by itself.
    connect(tk_root, ana, port, "ana")
    assert ana.master.title() == "Chat — ana"
    assert ana.status.text == f"Conectado como ana sem conta a 127.0.0.1:{port}."
    bruno.address_var.set(f"127.0.0.1:{port}")
    bruno.nick_var.set("bruno")
    press(tk_root, bruno.nick_entry, "<Return>")
    pump_until(tk_root, lambda: bruno.current is not None, TIMEOUT)
    assert labels(bruno) == ["#geral", "ana"]
    pump_until(tk_root, lambda: labels(ana) == ["#geral", "bruno"], TIMEOUT)
    assert tk_root.focus_get() is bruno.composer.text  # ready to type

    # A room message, with Enter; the box empties and keeps the focus.
    type_and_send(tk_root, bruno, "bom dia, turma!")
    assert bruno.composer.get() == ""
    assert tk_root.focus_get() is bruno.composer.text
    pump_until(tk_root, lambda: "bom dia, turma!" in ana.view.history(), TIMEOUT)
    assert "bruno  " in ana.view.history()  # the sender's name heads the group
    pump_until(tk_root, lambda: "bom dia, turma!  ✓" in bruno.view.history(), TIMEOUT)

    # Shift+Enter breaks the line; Enter sends both lines, shown as one group.
    bruno.composer.set("primeira linha")
    press(tk_root, bruno.composer.text, "<Shift-Return>")
    bruno.composer.text.insert("end", "segunda linha")
    assert bruno.composer.get() == "primeira linha\nsegunda linha"
    press(tk_root, bruno.composer.text, "<Return>")
    pump_until(tk_root, lambda: "segunda linha" in ana.view.history(), TIMEOUT)
    lines = ana.view.history().splitlines()
    assert lines[-3:] == ["bom dia, turma!", "primeira linha", "segunda linha"]

    # Emoji: nothing breaks, the text around them stays as typed.
    type_and_send(tk_root, bruno, "ok 👍🏽 e 🇧🇷 fim")
    pump_until(tk_root, lambda: "ok 👍🏽 e 🇧🇷 fim" in ana.view.history(), TIMEOUT)

    # Ana opens a conversation with Bruno (list selection + Iniciar Chat).
    open_person(tk_root, ana, "bruno")
    assert ana.view.title_label.full_text == "bruno"
    assert ana.view.subtitle_label.full_text == "online"
    assert tk_root.focus_get() is ana.composer.text
    type_and_send(tk_root, ana, "oi bruno, tudo bem?")
    pump_until(tk_root, lambda: "bruno (1)" in labels(bruno) or "ana (1)" in labels(bruno),
               TIMEOUT)
    assert "ana (1)" in labels(bruno)
    assert bruno.current.name == "#geral"  # nothing moved on Bruno's side
    assert bruno.master.title().startswith("(1) Chat — bruno")

    # Own messages look different: another colour and a tinted background.
    text = ana.view.text
    own = text.tag_ranges("own_name")
    assert text.get(own[0], own[1]) == "ana"
    assert text.tag_cget("own", "background") != text.cget("background")
    # A wrapped line starts where the text does, not under the name or the time.
    assert text.tag_cget("body", "lmargin2") == text.tag_cget("body", "lmargin1") != "0"

    # Bruno opens it: the badge and the title count go away.
    open_person(tk_root, bruno, "ana")
    pump_until(tk_root, lambda: "ana" in labels(bruno), TIMEOUT)
    assert not bruno.master.title().startswith("(")
    assert "oi bruno, tudo bem?" in bruno.view.history()

    # Bruno closes with the X: SAIR, thread stopped; Ana sees him offline.
    thread = bruno.session.thread
    bruno.master.tk.call(bruno.master.protocol("WM_DELETE_WINDOW"))
    assert bruno.closed and not thread.is_alive()
    pump_until(tk_root, lambda: ana.view.subtitle_label.full_text.startswith("offline"),
               TIMEOUT)
    assert "offline" in ana.sidebar.tree.item("p:bruno", "tags")


# --------------------------------------------------------------------------
# Nothing that arrives takes the window or the focus


def test_incoming_messages_never_open_windows_or_move_the_focus(tk_root, server, apps):
    port = server.address[1]
    ana = apps()
    connect(tk_root, ana, port, "ana")
    with WireClient(server.address) as bia, WireClient(server.address) as caio:
        for client, nick in ((bia, "bia"), (caio, "caio")):
            assert client.request("OLA 2") == "OK"
            client.register(nick)
            assert client.request("ENTRAR #geral") == "OK"
        open_person(tk_root, ana, "bia")
        windows = toplevels(tk_root)
        # Ana types (real key presses, through the window manager's focus)...
        ana.composer.text.focus_force()
        pump_until(tk_root, lambda: tk_root.focus_get() is ana.composer.text, TIMEOUT)
        active = xdotool("getactivewindow")
        subprocess.run(["xdotool", "type", "--delay", "5", "estou escrevendo"],
                       timeout=TIMEOUT, check=True)
        pump_until(tk_root, lambda: ana.composer.get() == "estou escrevendo", TIMEOUT)
        # ...while messages arrive from everywhere.
        caio.send_line("ENVIAR ana oi ana, é o caio")
        caio.send_line("ENVIAR #geral alguém aí?")
        bia.send_line("ENVIAR #geral eu!")
        for i in range(5):
            caio.send_line(f"ENVIAR ana mais uma {i}")
        pump_until(tk_root, lambda: "caio (6)" in labels(ana) and "#geral (2)" in labels(ana),
                   TIMEOUT)
        subprocess.run(["xdotool", "type", "--delay", "5", " ainda"], timeout=TIMEOUT,
                       check=True)
        pump_until(tk_root, lambda: ana.composer.get() == "estou escrevendo ainda", TIMEOUT)
        assert tk_root.focus_get() is ana.composer.text
        assert ana.current.name == "bia"
        assert toplevels(tk_root) == windows
        assert xdotool("getactivewindow") == active
        assert ana.master.title() == "(8) Chat — ana"
        # A message in the open conversation, while the user looks at it, is read at once.
        bia.send_line("ENVIAR ana oi!")
        pump_until(tk_root, lambda: "oi!" in ana.view.history(), TIMEOUT)
        assert "bia" in labels(ana) and ana.master.title() == "(8) Chat — ana"


# --------------------------------------------------------------------------
# Layout: nothing clips at the sizes a user can reach


@pytest.mark.parametrize("size", [(cliente.MIN_WIDTH, cliente.MIN_HEIGHT), (300, 200),
                                  (760, 520), (cliente.MIN_WIDTH, 1000), (1400, 900)])
def test_layout_keeps_input_and_buttons_usable_at_any_size(tk_root, server, apps, size):
    port = server.address[1]
    ana, bruno = apps(), apps()
    width, height = size
    ana.master.geometry(f"{width}x{height}")
    pump_until(tk_root, lambda: ana.master.winfo_width() >= min(width, cliente.MIN_WIDTH)
               and abs(ana.master.winfo_width() - max(width, cliente.MIN_WIDTH)) <= 2, TIMEOUT)
    assert ana.master.winfo_width() >= cliente.MIN_WIDTH
    assert ana.master.winfo_height() >= cliente.MIN_HEIGHT
    for widget in (ana.connect_button, ana.address_entry, ana.nick_entry,
                   ana.password_entry):
        assert fully_visible(widget), widget
    connect(tk_root, bruno, port, "bruno")
    connect(tk_root, ana, port, "ana")
    tk_root.update()
    for widget in (ana.composer.text, ana.send_button, ana.refresh_button, ana.chat_button,
                   ana.sidebar.join_button, ana.status.disconnect_button):
        assert fully_visible(widget), widget
    assert ana.composer.text.winfo_height() >= 40  # room for a line or two
    type_and_send(tk_root, ana, f"enviada em {width}x{height}")
    pump_until(tk_root, lambda: f"enviada em {width}x{height}" in bruno.view.history(),
               TIMEOUT)
    ana.send_button.invoke()  # an empty box sends nothing, even from the button
    tk_root.update()


def test_the_window_never_jumps_when_the_status_changes(tk_root, server, apps):
    ana = apps()
    connect(tk_root, ana, server.address[1], "ana")
    tk_root.update()
    before = (ana.master.winfo_width(), ana.master.winfo_height(),
              ana.master.winfo_reqwidth(), ana.master.winfo_reqheight())
    ana.flash("um texto de estado bem comprido " * 20, error=True)
    ana.sidebar.room_error.set("erro de sala " * 30)
    ana.view.subtitle_label.set("membros " * 80)
    tk_root.update()
    assert (ana.master.winfo_width(), ana.master.winfo_height(),
            ana.master.winfo_reqwidth(), ana.master.winfo_reqheight()) == before
    assert ana.status.label.cget("text").endswith("…")


# --------------------------------------------------------------------------
# Connecting: errors next to their field, in Portuguese


@pytest.mark.parametrize(("address", "nick", "password", "field", "expected"), [
    ("", "ana", "", "servidor", "Informe o servidor"),
    ("127.0.0.1:99999", "ana", "", "servidor", "Porta inválida"),
    ("[::1", "ana", "", "servidor", "Falta o ']'"),
    ("{server}", "", "", "apelido", "Informe um apelido."),
    ("{server}", "com espaço", "", "apelido", "Apelido inválido"),
    ("{server}", "ana", "curta", "senha", "6 a 128 caracteres"),
    ("{free}", "ana", "", "servidor", "Conexão recusada por 127.0.0.1:"),
    ("{server}", "Ocupado", "", "apelido", "“Ocupado” já está em uso"),
    ("{server}", "ana", "segredo123", "senha", "não guarda contas; entre sem senha"),
])
def test_connection_errors_appear_next_to_their_field(tk_root, server, apps, address, nick,
                                                      password, field, expected):
    with WireClient(server.address) as other:
        other.register("ocupado")
        app = apps()
        app.address_var.set(address.format(server=f"127.0.0.1:{server.address[1]}",
                                           free=f"127.0.0.1:{free_port()}"))
        app.nick_var.set(nick)
        app.password_var.set(password)
        app.connect_button.invoke()
        pump_until(tk_root, lambda: expected in app.panel.error_text(field), TIMEOUT)
        pump_until(tk_root, lambda: str(app.connect_button.cget("state")) == "normal", TIMEOUT)
        assert not app.connected and app.view_name == "connect"
        entry = app.panel.entries[field]
        assert str(entry.cget("style")) == "Invalid.TEntry"
        assert tk_root.focus_get() is entry
        others = [name for name in ("servidor", "apelido", "senha") if name != field]
        assert all(app.panel.error_text(name) == "" for name in others)


def test_ipv6_addresses_are_understood_and_shown_in_brackets(tk_root, apps):
    srv = servidor.Servidor(servidor.ServerConfig(host="::1", port=0, discovery=False))
    try:
        srv.start()
    except OSError as exc:
        pytest.skip(f"IPv6 indisponível nesta máquina: {exc}")
    try:
        app = apps()
        app.address_var.set(f"[::1]:{srv.address[1]}")
        app.nick_var.set("ana")
        app.connect_button.invoke()
        pump_until(tk_root, lambda: app.connected, TIMEOUT)
        assert f"[::1]:{srv.address[1]}" in app.status.text
        app.close()
    finally:
        srv.stop()


# --------------------------------------------------------------------------
# Rooms, the LAN, the bell, days


def test_rooms_are_joined_created_listed_and_left(tk_root, server, apps):
    port = server.address[1]
    ana, bruno = apps(), apps()
    connect(tk_root, ana, port, "ana")
    connect(tk_root, bruno, port, "bruno")
    ana.room_var.set("a b")
    ana.sidebar.join_button.invoke()
    assert "Nome de sala" in ana.sidebar.room_error.full_text
    ana.room_var.set("redes-2026")  # the # is optional
    ana.sidebar.join_button.invoke()
    pump_until(tk_root, lambda: ana.current is not None and ana.current.name == "#redes-2026",
               TIMEOUT)
    assert labels(ana)[:2] == ["#geral", "#redes-2026"]
    assert ana.sidebar.room_error.full_text == ""
    assert tk_root.focus_get() is ana.composer.text
    # Bruno finds it in the list of rooms (SALAS) and joins.
    bruno.refresh_rooms()
    pump_until(tk_root, lambda: "#redes-2026" in bruno.sidebar.room_entry.cget("values"),
               TIMEOUT)
    bruno.room_var.set("#redes-2026")
    press(tk_root, bruno.sidebar.room_entry, "<Return>")
    pump_until(tk_root, lambda: bruno.current.name == "#redes-2026", TIMEOUT)
    pump_until(tk_root, lambda: ana.view.subtitle_label.full_text
               == "2 participantes: ana, bruno", TIMEOUT)
    type_and_send(tk_root, bruno, "cheguei")
    pump_until(tk_root, lambda: "cheguei" in ana.view.history(), TIMEOUT)
    # Ana leaves: the room goes from her list; Bruno sees one participant.
    ana.view.leave_button.invoke()
    pump_until(tk_root, lambda: labels(ana)[:2] == ["#geral", "bruno"], TIMEOUT)
    assert ana.current is None
    pump_until(tk_root, lambda: bruno.view.subtitle_label.full_text
               == "1 participante: bruno", TIMEOUT)


def test_servers_found_on_the_lan_fill_the_address(tk_root, apps):
    import descoberta

    with running_server(**UNLIMITED, name="Laboratório 3") as srv:
        port = srv.address[1]
        searches = []

        def discover(hosts):
            searches.append(hosts)
            return descoberta.discover_in_background(port, ("127.0.0.1",), broadcast=False,
                                                     timeout=2.0)

        app = apps(discover=discover, host="outro.exemplo")
        servers = app.panel.servers_list
        pump_until(tk_root, lambda: servers.get_children(), TIMEOUT)
        (item,) = servers.get_children()
        assert servers.item(item, "text").strip() == f"Laboratório 3 — 127.0.0.1:{port}"
        servers.selection_set(item)
        pump_until(tk_root, lambda: app.address_var.get() == f"127.0.0.1:{port}", TIMEOUT)
        assert not app.tls_var.get()
        app.panel.refresh_servers_button.invoke()
        assert len(searches) == 2
        assert "Procurando servidores" in app.panel.servers_placeholder.cget("text")
        pump_until(tk_root, lambda: servers.get_children(), TIMEOUT)
        # A new user who typed nothing gets the server found already chosen.
        fresh = apps(discover=discover)
        assert fresh.address_var.get() == "127.0.0.1"
        pump_until(tk_root, lambda: fresh.address_var.get() == f"127.0.0.1:{port}", TIMEOUT)
        assert fresh.panel.servers_list.selection()


def test_nothing_found_on_the_lan_says_so(tk_root, apps):
    class NothingFound:
        def done(self):
            return True

        def result(self, timeout=0):
            return []

    app = apps(discover=lambda hosts: NothingFound())
    pump_until(tk_root, lambda: "Nenhum servidor respondeu"
               in app.panel.servers_placeholder.cget("text"), TIMEOUT)


def test_the_bell_rings_for_new_messages_but_not_too_often(tk_root, server, apps,
                                                          monkeypatch):
    monkeypatch.setattr(cliente, "BELL_INTERVAL", 0.5)
    ana = apps(sound=True)
    connect(tk_root, ana, server.address[1], "ana")
    with WireClient(server.address) as bia:
        bia.register("bia")
        for i in range(5):
            bia.send_line(f"ENVIAR ana rajada {i}")
        pump_until(tk_root, lambda: "bia (5)" in labels(ana), TIMEOUT)
        assert ana.bells == 1  # five messages, one bell
        later = time.monotonic() + 0.6
        pump_until(tk_root, lambda: time.monotonic() > later, TIMEOUT)
        bia.send_line("ENVIAR ana mais uma")
        pump_until(tk_root, lambda: "bia (6)" in labels(ana), TIMEOUT)
        assert ana.bells == 2
    quiet = apps(sound=False)
    connect(tk_root, quiet, server.address[1], "quieto")
    with WireClient(server.address) as bia:
        bia.register("bia2")
        bia.send_line("ENVIAR quieto oi")
        pump_until(tk_root, lambda: "bia2 (1)" in labels(quiet), TIMEOUT)
    assert quiet.bells == 0


def test_history_shows_a_separator_for_each_day(tk_root, apps):
    app = apps()
    now = cliente.now_ms()
    day = 24 * 3600 * 1000
    conv = app.store.ensure("#geral")
    app.store.add_history(conv, [
        protocolo.HistoryItem(1, now - 9 * day, "ana", "#geral", "faz tempo"),
        protocolo.HistoryItem(2, now - day, "bia", "#geral", "ontem à noite"),
        protocolo.HistoryItem(3, now - day + 1000, "bia", "#geral", "mesmo grupo"),
        protocolo.HistoryItem(4, now, "caio", "#geral", "agora"),
    ])
    app._show_chat_view()
    app.open_conversation("#geral")
    lines = app.view.history().splitlines()
    old_day = cliente.day_label(cliente.local_time(now - 9 * day).date(),
                                cliente.local_time(now).date())
    assert [line for line in lines if line in (old_day, "Ontem", "Hoje")] == [
        old_day, "Ontem", "Hoje"]
    assert lines[lines.index("Ontem") + 1].startswith("bia  ")
    assert lines[lines.index("Ontem") + 2:lines.index("Ontem") + 4] == [
        "ontem à noite", "mesmo grupo"]  # one header for the group


def test_a_message_to_someone_who_left_without_an_account_says_so(tk_root, server, apps):
    ana = apps()
    connect(tk_root, ana, server.address[1], "ana")
    with WireClient(server.address) as carla:
        carla.register("carla")
        open_person(tk_root, ana, "carla")
        assert carla.request("CANCELAR_REGISTRO") == "OK"
        type_and_send(tk_root, ana, "ainda está aí?")
    pump_until(tk_root, lambda: "ainda está aí?  ✗ carla não está online e não tem conta neste "
               "servidor: a mensagem não foi entregue. Reenviar" in ana.view.history(), TIMEOUT)


# --------------------------------------------------------------------------
# Keyboard


def test_keyboard_focus_tab_order_and_switching_conversations(tk_root, server, apps):
    port = server.address[1]
    ana = apps(host="127.0.0.1", port=port)
    pump_until(tk_root, lambda: tk_root.focus_get() is ana.nick_entry, TIMEOUT)  # initial
    with WireClient(server.address) as bia:
        bia.register("bia")
        ana.nick_var.set("ana")
        ana.connect_button.invoke()
        pump_until(tk_root, lambda: ana.current is not None, TIMEOUT)
        pump_until(tk_root, lambda: "bia" in labels(ana), TIMEOUT)
        assert tk_root.focus_get() is ana.composer.text
        # Tab leaves the message box for Enviar (it does not insert a tab).
        press(tk_root, ana.composer.text, "<Tab>")
        assert tk_root.focus_get() is ana.send_button and ana.composer.get() == ""
        # Ctrl+Tab goes to the next conversation, Alt+1 back to the first.
        press(tk_root, ana.composer.text, "<Control-Tab>")
        assert ana.current.name == "bia"
        press(tk_root, ana.composer.text, "<Alt-Key-1>")
        assert ana.current.name == "#geral"
        press(tk_root, ana.composer.text, "<Control-Shift-Tab>")
        assert ana.current.name == "bia"
        # A draft stays with its conversation.
        ana.composer.set("rascunho para a bia")
        press(tk_root, ana.composer.text, "<Alt-Key-1>")
        assert ana.composer.get() == ""
        press(tk_root, ana.composer.text, "<Alt-Key-2>")
        assert ana.composer.get() == "rascunho para a bia"
        # Esc closes the conversation: placeholder, focus in the list, visible selection gone.
        press(tk_root, ana.composer.text, "<Escape>")
        assert ana.current is None and tk_root.focus_get() is ana.sidebar.tree
        assert "Escolha uma sala ou uma pessoa" in ana.view.placeholder.cget("text")
        assert str(ana.composer.text.cget("state")) == "disabled"
        # Arrow keys in the list open conversations; Enter goes to the message box.
        ana.sidebar.tree.focus("r:#geral")
        press(tk_root, ana.sidebar.tree, "<Down>")
        press(tk_root, ana.sidebar.tree, "<Up>")
        pump_until(tk_root, lambda: ana.current is not None, TIMEOUT)
        press(tk_root, ana.sidebar.tree, "<Return>")
        assert tk_root.focus_get() is ana.composer.text


# --------------------------------------------------------------------------
# Losing the server and coming back, without a click


def test_reconnect_after_the_server_is_killed_and_restarted(tk_root, apps):
    with ServerProcess("--taxa", "0", "--taxa-ip", "0", "--banda-ip", "0", "--registros-ip",
                       "0", "--sem-descoberta") as first:
        port = first.port
        ana, bruno = apps(), apps()
        connect(tk_root, ana, port, "ana")
        connect(tk_root, bruno, port, "bruno")
        type_and_send(tk_root, ana, "antes da queda")
        pump_until(tk_root, lambda: "antes da queda" in bruno.view.history(), TIMEOUT)
        # Frozen, then killed: the message sent meanwhile never gets its OK.
        first.proc.send_signal(signal.SIGSTOP)
        type_and_send(tk_root, ana, "no meio da queda")
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(TIMEOUT)
    pump_until(tk_root, lambda: "Reconectando" in ana.status.text, TIMEOUT)
    assert ana.status.kind == "waiting"
    pump_until(tk_root, lambda: "✗ não enviada (a conexão caiu) Reenviar"
               in ana.view.history(), TIMEOUT)
    assert "Conexão com o servidor perdida. Reconectando…" in ana.view.history()
    pump_until(tk_root, lambda: "Conexão recusada" in ana.status.text
               or "reconectando" in ana.status.text.lower(), TIMEOUT)
    with ServerProcess("--taxa", "0", "--taxa-ip", "0", "--banda-ip", "0", "--registros-ip",
                       "0", "--sem-descoberta", port=port):
        for app in (ana, bruno):
            pump_until(tk_root, lambda: app.connected, TIMEOUT * 2)  # noqa: B023
        pump_until(tk_root, lambda: ana.status.text.startswith("Conectado como ana"), TIMEOUT)
        pump_until(tk_root, lambda: "Reconectado" in ana.view.history(), TIMEOUT)
        assert ana.current.name == "#geral"
        pump_until(tk_root, lambda: labels(ana) == ["#geral", "bruno"], TIMEOUT)
        # The room was joined again: Bruno hears Ana. One click resends the lost line.
        resend = [tag for tag in ana.view.text.tag_names() if tag.startswith("rs")]
        assert len(resend) == 1
        click_text(tk_root, ana.view.text, ana.view.text.tag_ranges(resend[0])[0])
        pump_until(tk_root, lambda: "no meio da queda" in bruno.view.history(), TIMEOUT)
        pump_until(tk_root, lambda: "no meio da queda  ✓" in ana.view.history(), TIMEOUT)
        assert "não enviada" not in ana.view.history()


UNLIMITED_SERVER = ("--taxa", "0", "--taxa-ip", "0", "--banda-ip", "0", "--registros-ip", "0",
                    "--max-por-ip", "0", "--sem-descoberta")


def test_room_messages_missed_while_away_are_fetched_after_reconnecting(tk_root, apps,
                                                                        tmp_path):
    data = str(tmp_path / "chat.sqlite3")
    with ServerProcess("--dados", data, *UNLIMITED_SERVER) as first:
        port = first.port
        ana = apps(session_factory=lambda: cliente.ChatSession(reconnect_delays=(1.5, 0.5)))
        connect(tk_root, ana, port, "ana")
        type_and_send(tk_root, ana, "antes")
        pump_until(tk_root, lambda: "antes  ✓" in ana.view.history(), TIMEOUT)
    pump_until(tk_root, lambda: "Reconectando em" in ana.status.text, TIMEOUT)
    with ServerProcess("--dados", data, *UNLIMITED_SERVER, port=port) as again:
        # While Ana waits for her next attempt, the room goes on without her.
        with WireClient(again.address) as bia:
            for line in ("OLA 2", "REGISTRAR bia", "ENTRAR #geral"):
                assert bia.request(line) == "OK"
            for i in range(3):
                assert bia.request(f"ENVIAR #geral enquanto ana estava fora {i}").startswith("OK ")
        pump_until(tk_root, lambda: ana.connected, TIMEOUT * 2)
        pump_until(tk_root, lambda: "Reconectado: 3 mensagens enviadas enquanto você estava "
                   "fora estão acima." in ana.view.history(), TIMEOUT)
        history = ana.view.history()
        assert history.index("antes") < history.index("fora 0") < history.index("fora 2") < (
            history.index("Reconectado: 3"))


def test_typing_while_disconnected_is_marked_unsent_never_lost(tk_root, apps):
    with running_server(**UNLIMITED, discovery=False) as srv:
        port = srv.address[1]
        ana = apps(session_factory=lambda: cliente.ChatSession(reconnect_delays=(30.0,)))
        connect(tk_root, ana, port, "ana")
    pump_until(tk_root, lambda: "Reconectando em" in ana.status.text, TIMEOUT)
    assert fully_visible(ana.status.reconnect_button)
    assert fully_visible(ana.status.cancel_button)
    type_and_send(tk_root, ana, "alguém aí?")
    assert "alguém aí?  ✗ sem conexão: não enviada Reenviar" in ana.view.history()
    ana.status.cancel_button.invoke()
    pump_until(tk_root, lambda: ana.session is None, TIMEOUT)
    assert fully_visible(ana.status.connect_button)
    assert "Conectar" in ana.status.connect_button.cget("text")
    # Conectar tries the same server again; it is gone, so the form says why.
    ana.status.connect_button.invoke()
    pump_until(tk_root, lambda: "Conexão recusada" in ana.panel.error_text("servidor"), TIMEOUT)
    assert ana.view_name == "connect" and ana.nick_var.get() == "ana"


# --------------------------------------------------------------------------
# History, receipts, offline accounts


def test_a_pane_showing_its_last_line_keeps_showing_it_when_the_window_resizes(
        tk_root, server, apps):
    ana = apps()
    ana.master.geometry("760x520")
    connect(tk_root, ana, server.address[1], "ana")
    with WireClient(server.address) as bia:
        assert bia.request("OLA 2") == "OK"
        bia.register("bia")
        assert bia.request("ENTRAR #geral") == "OK"
        bia.send(b"".join(f"ENVIAR #geral linha {i:03d}\n".encode() for i in range(80)))
        assert all(line.startswith("OK ") for line in bia.read_lines(80))
        pump_until(tk_root, lambda: "linha 079" in ana.view.history(), TIMEOUT)
    text = ana.view.text

    def last_line_visible() -> bool:
        tk_root.update()
        return text.dlineinfo("end-2c") is not None

    pump_until(tk_root, last_line_visible, TIMEOUT)
    for size in ("1200x900", "760x520", "1000x700"):  # taller, shorter, taller again
        ana.master.geometry(size)
        pump_until(tk_root, lambda s=size: ana.master.winfo_geometry().startswith(s), TIMEOUT)
        pump_until(tk_root, last_line_visible, TIMEOUT, f"a última linha à vista em {size}")
    # Scrolled up to read, a resize keeps the reading place instead.
    text.yview_moveto(0.3)
    tk_root.update()
    reading = text.index("@0,0")
    ana.master.geometry("1200x900")
    pump_until(tk_root, lambda: ana.master.winfo_geometry().startswith("1200x900"), TIMEOUT)
    assert text.index("@0,0") == reading
    assert not last_line_visible()


def test_history_comes_in_pages_when_scrolling_up(tk_root, server, apps):
    total = 260
    with WireClient(server.address) as bia:
        assert bia.request("OLA 2") == "OK"
        bia.register("bia")
        assert bia.request("ENTRAR #geral") == "OK"
        bia.send(b"".join(f"ENVIAR #geral linha {i:03d}\n".encode() for i in range(total)))
        assert all(line.startswith("OK ") for line in bia.read_lines(total))
        ana = apps()
        connect(tk_root, ana, server.address[1], "ana")
        conv = ana.current
        pump_until(tk_root, lambda: conv.history == "more" and len(conv.entries) >= 50, TIMEOUT)
        assert ana.view.at_bottom()
        assert "linha 259" in ana.view.history()
        for _ in range(20):  # bounded: each scroll to the top asks for one more page
            if conv.history == "done":
                break
            oldest = conv.entries[0].text  # the line at the top once scrolled up
            ana.view.text.yview_moveto(0)
            pump_until(tk_root, lambda old=oldest: conv.history == "done" or (
                conv.history != "loading" and conv.entries[0].text != old), TIMEOUT)
            tk_root.update()
            top = ana.view.text.index("@0,0")
            bottom = ana.view.text.index(f"@0,{ana.view.text.winfo_height()}")
            assert oldest in ana.view.text.get(top, bottom)  # the line read stays in view
        assert conv.history == "done"
        texts = [entry.text for entry in conv.entries if entry.kind == "msg"]
        assert texts == [f"linha {i:03d}" for i in range(total)]
        assert ana.view.history().startswith("Hoje\nbia")


def test_receipts_and_a_message_to_an_offline_account(tk_root, account_server, apps):
    port = account_server.address[1]
    ana, bruno = apps(), apps()
    connect(tk_root, ana, port, "ana", "senha-da-ana")
    connect(tk_root, bruno, port, "bruno", "senha-do-bruno")
    open_person(tk_root, ana, "bruno")
    type_and_send(tk_root, ana, "chegou?")
    pump_until(tk_root, lambda: "chegou?  ✓✓" in ana.view.history(), TIMEOUT)

    bruno.close()
    pump_until(tk_root, lambda: ana.view.subtitle_label.full_text.startswith("offline"),
               TIMEOUT)
    type_and_send(tk_root, ana, "te espero amanhã")
    pump_until(tk_root, lambda: "te espero amanhã  ✓ · bruno está offline: será entregue "
               "quando voltar" in ana.view.history(), TIMEOUT)

    again = apps()
    connect(tk_root, again, port, "bruno", "senha-do-bruno")
    pump_until(tk_root, lambda: "ana (1)" in labels(again), TIMEOUT)
    open_person(tk_root, again, "ana")
    pump_until(tk_root, lambda: "te espero amanhã" in again.view.history(), TIMEOUT)
    # The conversation's history, from the server, above the message that waited.
    pump_until(tk_root, lambda: "chegou?" in again.view.history(), TIMEOUT)
    assert again.view.history().index("chegou?") < again.view.history().index("te espero")
    pump_until(tk_root, lambda: "te espero amanhã  ✓✓" in ana.view.history(), TIMEOUT)


# --------------------------------------------------------------------------
# Floods: bounded work per tick, bounded memory, never a window


MAX_STALL_MS = 200
FLOOD_ATTEMPTS = 3
"""Rounds allowed for one clean wall-clock measurement (the machine is shared)."""


class Heartbeat:
    """An ``after(10)`` callback that records the longest gap between its runs.

    Each gap is measured in wall-clock time (what the user sees) and in CPU
    time of the Tk thread (the work done in it, without the time the OS gave
    to other processes on a busy machine).
    """

    def __init__(self, root: tk.Tk) -> None:
        self.root = root
        self.reset()
        self._id = root.after(10, self._beat)

    def reset(self) -> None:
        self.wall, self.cpu = time.monotonic(), time.thread_time()
        self.worst_wall = self.worst_cpu = 0.0

    def _beat(self) -> None:
        wall, cpu = time.monotonic(), time.thread_time()
        self.worst_wall = max(self.worst_wall, wall - self.wall)
        self.worst_cpu = max(self.worst_cpu, cpu - self.cpu)
        self.wall, self.cpu = wall, cpu
        self._id = self.root.after(10, self._beat)

    def stop(self) -> None:
        self.root.after_cancel(self._id)


def measured_rounds(tk_root, heartbeat, run_round, describe):
    """Run ``run_round`` until one round stays under the stall bound in wall time too."""
    for attempt in range(1, FLOOD_ATTEMPTS + 1):
        pump_until(tk_root, lambda: True)
        heartbeat.reset()
        shown = run_round(attempt)
        settle = time.monotonic() + 0.2  # a late stall would be seen too
        pump_until(tk_root, lambda: time.monotonic() > settle, 2)  # noqa: B023
        wall_ms, cpu_ms = heartbeat.worst_wall * 1000, heartbeat.worst_cpu * 1000
        print(f"\n{describe} (rodada {attempt}): mostradas em {shown:.2f} s; maior pausa do "
              f"laço de eventos: {wall_ms:.0f} ms (CPU da thread do Tk: {cpu_ms:.0f} ms)")
        assert cpu_ms < MAX_STALL_MS
        if wall_ms < MAX_STALL_MS:
            return attempt
    pytest.fail(f"pausa de {wall_ms:.0f} ms em todas as {FLOOD_ATTEMPTS} rodadas")


def test_ten_thousand_messages_never_freeze_the_window(tk_root, server, apps):
    total = 10_000
    bruno = apps()
    connect(tk_root, bruno, server.address[1], "bruno")
    raw = WireClient(server.address, timeout=30)
    try:
        raw.register("flood")
        open_person(tk_root, bruno, "flood")
        heartbeat = Heartbeat(tk_root)

        def run_round(attempt: int) -> float:
            def flood() -> None:
                for start in range(0, total, 1000):
                    raw.send(b"".join(f"ENVIAR bruno mensagem {i}\n".encode()
                                      for i in range(start, start + 1000)))
                assert raw.read_lines(total, 30) == ["OK"] * total

            sender = threading.Thread(target=flood)
            started = time.monotonic()
            sender.start()
            pump_until(tk_root, lambda: bruno.received == total * attempt, 60)
            pump_until(tk_root, lambda: f"mensagem {total - 1}\n" in bruno.view.text.get(
                "end-3l", "end"), TIMEOUT)
            sender.join(TIMEOUT)
            return time.monotonic() - started

        measured_rounds(tk_root, heartbeat, run_round, f"enxurrada de {total} mensagens")
        heartbeat.stop()
        conv = bruno.current
        assert conv.name == "flood"
        assert len(conv.entries) <= cliente.MAX_ENTRIES_PER_CONVERSATION
        texts = [entry.text for entry in conv.entries]
        assert texts == sorted(texts, key=lambda t: int(t.split()[1]))  # in order
        assert bruno.view.at_bottom()
        body_lines = [line for line in bruno.view.history().splitlines()
                      if line.startswith("mensagem")]
        assert len(body_lines) == len(conv.entries)  # the pane shows what the model keeps
    finally:
        raw.close()


def test_two_thousand_strangers_add_list_entries_never_windows(tk_root, apps):
    strangers = 2000
    with running_server(**UNLIMITED, discovery=False, max_per_ip=0, max_clients=0) as srv:
        ana = apps()
        connect(tk_root, ana, srv.address[1], "ana")
        windows = toplevels(tk_root)
        heartbeat = Heartbeat(tk_root)
        clients: list[WireClient] = []
        try:
            def run_round(attempt: int) -> float:
                def flood() -> None:
                    for i in range(strangers):
                        client = WireClient(srv.address, timeout=30)
                        clients.append(client)
                        client.send(f"REGISTRAR estranho{attempt}x{i}\n"
                                    f"ENVIAR ana oi, sou o {i}\n".encode())
                    for client in clients[-strangers:]:
                        assert client.read_lines(2, 30) == ["OK", "OK"]

                sender = threading.Thread(target=flood)
                started = time.monotonic()
                sender.start()
                pump_until(tk_root, lambda: ana.received == strangers * attempt, 90)
                sender.join(30)
                return time.monotonic() - started

            measured_rounds(tk_root, heartbeat, run_round, f"{strangers} desconhecidos")
            heartbeat.stop()
            assert toplevels(tk_root) == windows
            assert ana.current.name == "#geral"
            pump_until(tk_root, lambda: ana.sidebar.pending == 0, TIMEOUT)
            people = [label for label in labels(ana) if label.startswith("estranho")]
            assert len(people) >= strangers  # everyone online is listed
            assert len(ana.store.conversations) <= cliente.MAX_CONVERSATIONS
            with_badges = [label for label in people if label.endswith("(1)")]
            assert 0 < len(with_badges) <= cliente.MAX_CONVERSATIONS
            assert ana.master.title().startswith(f"({ana.store.total_unread}) ")
            started = time.monotonic()
            ana.close()
            closing = time.monotonic() - started
            print(f"fechar a janela depois da enxurrada: {closing:.2f} s")
            assert closing < 3.0  # closing never takes long
        finally:
            for client in clients:
                client.close()


def rss_bytes() -> int | None:
    """This process's resident memory (Linux), or None where /proc is not there."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return None


def test_long_messages_from_many_senders_keep_memory_bounded(tk_root, apps):
    """64 senders, 150 messages of 3.9 KB each (37 MB): the window's memory stays bounded."""
    if rss_bytes() is None:
        pytest.skip("sem /proc/self/statm para medir a memória")
    senders, each = 64, 150
    text = "x" * 3900
    with ServerProcess(*UNLIMITED_SERVER) as srv:
        ana = apps()
        connect(tk_root, ana, srv.port, "ana")
        before = rss_bytes()
        clients = [WireClient(srv.address, timeout=30) for _ in range(senders)]
        try:
            for index, client in enumerate(clients):
                client.register(f"remetente{index}")

            def flood(client: WireClient) -> None:
                client.send(b"".join(f"ENVIAR ana {text} {i}\n".encode()
                                     for i in range(each)))

            threads = [threading.Thread(target=flood, args=(c,)) for c in clients]
            for thread in threads:
                thread.start()
            peak = before
            deadline = time.monotonic() + 60
            while ana.received < senders * each and time.monotonic() < deadline:
                tk_root.update()
                peak = max(peak, rss_bytes())
                time.sleep(0.005)
            for thread in threads:
                thread.join(TIMEOUT)
        finally:
            for client in clients:
                client.close()
        assert ana.received == senders * each
        grown_mib = (peak - before) / (1024 * 1024)
        print(f"\n{senders} remetentes × {each} mensagens de 3,9 KB: memória +{grown_mib:.0f} MiB")
        assert grown_mib < 100
        assert ana.store.total_chars <= cliente.MAX_TOTAL_CHARS


# --------------------------------------------------------------------------
# TLS


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    return make_certificate(tmp_path_factory.mktemp("tls"))


def test_tls_checkbox_connects_securely_or_explains_why_not(tk_root, apps, certificate):
    cert, key = certificate
    context = servidor.make_tls_context(cert, key)
    with running_server(tls_context=context, **UNLIMITED, discovery=False) as srv:
        port = srv.address[1]
        secure = apps(tls_ca=cert)
        assert secure.tls_var.get()  # --tls-ca checks the box
        connect(tk_root, secure, port, "ana")
        assert secure.status.text == f"Conectado como ana sem conta a 127.0.0.1:{port} (TLS)."

        untrusted = apps()  # no CA: the system store does not know this certificate
        untrusted.tls_check.invoke()
        untrusted.address_var.set(f"127.0.0.1:{port}")
        untrusted.nick_var.set("bruno")
        untrusted.connect_button.invoke()
        pump_until(tk_root, lambda: "rejeitado" in untrusted.panel.error_text("servidor"),
                   TIMEOUT)

        plain = apps()
        plain.address_var.set(f"127.0.0.1:{port}")
        plain.nick_var.set("carla")
        plain.connect_button.invoke()
        pump_until(tk_root, lambda: "exige TLS" in plain.panel.error_text("servidor"), TIMEOUT)


# --------------------------------------------------------------------------
# The program itself


def window_titled(title: str) -> str | None:
    """The X id of a window titled exactly ``title`` (xdotool's regex is ASCII only)."""
    for window in xdotool("search", "--name", "Chat").split():
        if xdotool("getwindowname", window) == title:
            return window
    return None


def test_program_connects_from_the_command_line_and_exits_zero(server, xvfb_display,
                                                               window_manager):
    port = server.address[1]
    with WireClient(server.address) as watcher:
        watcher.register("vigia")
        assert watcher.request("ASSINAR") == "OK"
        program = subprocess.Popen(
            [sys.executable, str(Path(cliente.__file__)), "--host", f"127.0.0.1:{port}",
             "--apelido", "zé", "--conectar", "--sem-som"],
            env={**os.environ, "DISPLAY": xvfb_display}, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True)
        try:
            assert watcher.read_line(15) == "ENTROU zé"
            if shutil.which("xdotool"):  # the real window: its title, class and icon
                window = wait_until(lambda: window_titled("Chat — zé"), TIMEOUT,
                                    "janela 'Chat — zé'")
                props = subprocess.run(["xprop", "-id", window, "WM_CLASS", "_NET_WM_ICON"],
                                       capture_output=True, text=True, timeout=TIMEOUT)
                if props.returncode == 0:
                    assert 'WM_CLASS(STRING) = "chat-redes", "Chat-redes"' in props.stdout
                    assert "_NET_WM_ICON(CARDINAL)" in props.stdout
            program.send_signal(signal.SIGTERM)
            _out, err = program.communicate(timeout=TIMEOUT)
        finally:
            if program.poll() is None:
                program.kill()
                program.communicate()
        assert program.returncode == 0, err
        assert "Traceback" not in err
        assert watcher.read_line() == "SAIU zé"


def test_help_and_command_line_errors_are_in_portuguese():
    done = subprocess.run([sys.executable, str(Path(cliente.__file__)), "--help"],
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0
    assert done.stdout.startswith("uso: chat-cliente")
    for english in ("usage", "show this help", "options:", "optional arguments"):
        assert english not in done.stdout
    assert "mostra esta ajuda e sai" in done.stdout and "opções:" in done.stdout
    bad = subprocess.run([sys.executable, str(Path(cliente.__file__)), "--port", "abc", "-x"],
                         capture_output=True, text=True, timeout=TIMEOUT)
    assert bad.returncode == 2
    assert "erro: opção --port: porta inválida: 'abc'" in bad.stderr
    assert "error" not in bad.stderr and "argument" not in bad.stderr
